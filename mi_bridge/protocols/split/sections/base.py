"""The interface of the split protocol's optional sections (the site scan, the second site, the KV
channel): what a section adds to each stage of a run, each part a no-op unless it overrides it.

A run asks its enabled sections (``enabled``, from the options), in registry order, to compute
(``per_seed`` inside the seed loop, ``evaluate`` after every seed), to add rows to items.parquet
(``item_rows``), results.json's entry (``summarize``) and the saved artifacts (``artifacts``). The report
and the figure read results.json only: they ask the sections whose entry it holds (``present``) for
tables, panels and overlays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd

    from mi_bridge.config import ExperimentConfig
    from mi_bridge.protocols.split.experiment import SeedData
    from mi_bridge.protocols.split.items import SeedItems
    from mi_bridge.protocols.split.options import Options
    from mi_bridge.protocols.split.prepare import SeedContext
    from mi_bridge.report.result import Table

SLOTS = ("sites", "site", "conditions")
"""Where a section's report tables go: after the decomposition (``sites``), after the site diagnosis
(``site``) or after the tables of conditions (``conditions``)."""


@dataclass
class SplitRun:
    """One split run as its sections read it: the seeds (contexts and the residual results), layers and
    conditions, the enabled sections and what each computed (``data``, by key)."""

    contexts: Sequence[SeedContext]
    seeds: list[SeedData]
    sender_layer: int
    receiver_layer: int
    conditions: list
    active: list[Section] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ExperimentConfig:
        return self.contexts[0].config


@dataclass
class Row:
    """A full-width row of the figure below the condition panels: ``draw(fig, cell)`` fills its grid
    cell; ``extra_height`` inches are added to the figure for it."""

    draw: Callable
    extra_height: float = 0.0


class Section:
    """One optional section (module docstring); a subclass overrides the parts it has."""

    key: ClassVar[str]
    """Its entry in results.json (and its name in the registry)."""
    after: ClassVar[str | None] = None
    """The results.json entry it follows (None: at the end, after the verdict)."""

    def enabled(self, options: Options) -> bool:
        """Whether a run with these (split) options computes it."""
        raise NotImplementedError

    def per_seed(self, ctx: SeedContext, seed: SeedData) -> None:
        """Inside the seed loop, after the seed's requested site: add to ``seed``."""

    def evaluate(self, run: SplitRun) -> Any:
        """After every seed: the section's data (kept in ``run.data[key]``)."""
        return None

    def item_rows(self, items: Sequence[SeedItems], run: SplitRun, position: str) -> list[pd.DataFrame]:
        """Its parts of items.parquet, after the run's own rows."""
        return []

    def summarize(self, config: ExperimentConfig, run: SplitRun, results: dict) -> Any:
        """Its results.json entry (None: none), given the entries before it (not the verdict)."""
        return None

    def idle(self) -> Any:
        """Its results.json entry when it did not run (None: no entry)."""
        return None

    def artifacts(self, staging: Path, run: SplitRun) -> None:
        """What it saves in the run folder (bridges)."""

    def present(self, results: dict) -> bool:
        """Whether a results.json holds it (the report and the figure show it then)."""
        return bool(results.get(self.key))

    def tables(self, results: dict) -> list[tuple[str, Table]]:
        """Its report tables, each with its slot (``SLOTS``)."""
        return []

    def series(self, results: dict) -> list[tuple[list[dict], str, str]]:
        """Conditions drawn beside the requested site's in each condition panel: (conditions, colour,
        label)."""
        return []

    def rows(self, results: dict) -> list[Row]:
        """Its full-width rows of the figure, below the condition panels."""
        return []

    def title(self, results: dict) -> str:
        """What it adds to the figure's title."""
        return ""
