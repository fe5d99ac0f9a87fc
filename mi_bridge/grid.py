"""A sweep's grid: list and range values of the config fields that may vary, expanded to one
``ExperimentConfig`` per cell with a stable name (the cell's run folder under the sweep folder).

Pure: no I/O, no models.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

from mi_bridge.config import ExperimentConfig, all_options, choices_of
from mi_bridge.errors import UserError

SHARED_GRID_FIELDS = (
    "sender",
    "receiver",
    "sender_revision",
    "receiver_revision",
    "sender_layer",
    "receiver_layer",
)
"""The shared config fields a sweep may vary (every other field is the same in all cells)."""


def grid_fields() -> tuple[str, ...]:
    """Every field a sweep may vary: the shared ones and each registered protocol's ``grid_fields``."""
    options = (name for cls in all_options().values() for name in cls.grid_fields)
    return tuple(dict.fromkeys((*SHARED_GRID_FIELDS, *options)))


LAYER_FIELDS = ("sender_layer", "receiver_layer")


def parse_layers(text: str) -> list[int]:
    """``0-11``, ``0,4,8`` or both (``0-3,8``): distinct layers in the order given."""
    layers: list[int] = []
    for part in text.split(","):
        start, dash, stop = part.strip().partition("-")
        try:
            span = range(int(start), int(stop) + 1) if dash else [int(start)]
        except ValueError:
            raise UserError(f"not a layer list or range: {text!r} (e.g. 0-11 or 0,4,8)") from None
        if not span:
            raise UserError(f"empty layer range {part.strip()!r} in {text!r} (write low-high)")
        layers += [layer for layer in span if layer not in layers]
    return layers


def parse_names(text: str) -> list[str]:
    """``a,b``: distinct names in the order given (names may contain dashes, so no ranges)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UserError(f"empty name in the list {text!r}")
    return list(dict.fromkeys(names))


def parse_values(name: str, text: str) -> list:
    """A grid field's values; a field of a few names (position, target) takes only those."""
    if name in LAYER_FIELDS:
        return parse_layers(text)
    values = parse_names(text)
    allowed = choices_of(name)
    unknown = [v for v in values if allowed is not None and v not in allowed]
    if unknown:
        raise UserError(f"unknown {name} {unknown[0]!r} in {text!r}; choose from {', '.join(allowed)}")
    return values


@dataclass(frozen=True)
class Cell:
    """One grid cell: its name (run folder name) and its full config."""

    name: str
    config: ExperimentConfig

    def pair_key(self) -> tuple:
        """Cells with the same key share the loaded model pair."""
        c = self.config
        return (c.pair, c.sender_name, c.receiver_name, c.sender_revision, c.receiver_revision)


def cell_name(config: ExperimentConfig) -> str:
    """``<sender>[@rev]-<receiver>[@rev]-L<ls>-L<lr>`` and the protocol's grid fields (split:
    ``-<position>-<target>``); ``Lmid`` for a default layer."""

    def model(name: str, revision: str | None) -> str:
        return name if revision is None else f"{name}@{revision}"

    def layer(value: int | None) -> str:
        return "Lmid" if value is None else f"L{value}"

    parts = (
        model(config.sender_name, config.sender_revision),
        model(config.receiver_name, config.receiver_revision),
        layer(config.sender_layer),
        layer(config.receiver_layer),
        *(str(getattr(config.options, name)) for name in config.options.grid_fields),
    )
    return "-".join(parts).replace("/", "_")


def expand(base: ExperimentConfig, values: dict[str, list], folder: Path) -> list[Cell]:
    """Every combination of ``values`` (field -> list) on top of ``base``, each cell's run folder under
    ``folder``; a combination the config rejects is a UserError naming the cell."""
    unknown = set(values) - set(SHARED_GRID_FIELDS) - set(base.options.grid_fields)
    if unknown:
        raise ValueError(f"not grid fields: {sorted(unknown)}")
    names = list(values)
    cells = []
    for combo in itertools.product(*(values[n] for n in names)):
        config = base.with_values(**dict(zip(names, combo, strict=True)), out=None)
        name = cell_name(config)
        cells.append(Cell(name, replace(config, out=str(folder / name))))
    return cells
