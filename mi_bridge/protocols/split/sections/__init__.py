"""The split protocol's optional sections, each one module behind ``base.Section``, in one registry: a
new section is its module (its computation per seed, kept in ``SeedData.sections`` under its key, its
summary, tables, figure rows and artifacts) and one ``register_section`` line, plus the option that
switches it on (``enabled`` reads it from the split options). Registry order is report order: the rows
of items.parquet, the report's tables and the figure's rows follow it."""

from __future__ import annotations

import importlib
from functools import cache

from mi_bridge.protocols.split.sections.base import SLOTS, Row, Section, SplitRun

SECTIONS: dict[str, str] = {}
"""Each section's results.json key with its class, as ``module:class`` (imported when first asked for)."""


def register_section(key: str, target: str) -> None:
    """Make the section ``target`` part of every split run that enables it; a key is registered once."""
    if key in SECTIONS:
        raise ValueError(f"a split section {key!r} is registered already ({SECTIONS[key]})")
    SECTIONS[key] = target


register_section("second_site", "mi_bridge.protocols.split.sections.second_site:SecondSite")
register_section("site_scan", "mi_bridge.protocols.split.sections.site_scan:SiteScan")
register_section("kv_channel", "mi_bridge.protocols.split.sections.kv:KVChannel")


@cache
def _section(target: str) -> Section:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)()


def sections() -> list[Section]:
    """Every registered section, in registry order."""
    return [_section(target) for target in SECTIONS.values()]


def enabled(options) -> list[Section]:
    """The sections a run with these (split) options computes."""
    return [section for section in sections() if section.enabled(options)]


def present(results: dict) -> list[Section]:
    """The sections a results.json holds."""
    return [section for section in sections() if section.present(results)]


__all__ = [
    "SLOTS",
    "SECTIONS",
    "Row",
    "Section",
    "SplitRun",
    "enabled",
    "present",
    "register_section",
    "sections",
]
