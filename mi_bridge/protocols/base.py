"""The protocol interface, and the registry of protocols by name.

A protocol is what a run does between loading the pair and publishing the run folder, in five stages:
``prepare`` (items, states, bridges) → ``conditions`` (what to evaluate) → ``evaluate`` → ``summarize``
(results.json's sections) → ``judge`` (the verdict as a ``Result``). ``run`` chains them; the commands
(``mi_bridge.run``, the sweep, the analyses) know only this interface, so a third protocol is a new
subpackage (``options.py`` and its ``Protocol``) and one ``config.register_protocol`` call. Protocols never import each other: what both use lives in
``mi_bridge.core``, ``mi_bridge.bridges`` and ``mi_bridge.models``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mi_bridge.config import ExperimentConfig, protocol_options
from mi_bridge.errors import UserError
from mi_bridge.report.result import Result


@dataclass
class Outcome:
    """One run's results.json sections and what else its folder gets (bridges, predictions)."""

    results: dict
    evaluated: Any
    """The protocol's own per-run data, handed back to ``write_artifacts``."""


class Protocol(ABC):
    name: ClassVar[str]

    @abstractmethod
    def prepare(self, config: ExperimentConfig, pair, sender_layer: int, receiver_layer: int, store) -> Any:
        """Items, cached states and fitted bridges: everything the conditions read."""

    @abstractmethod
    def conditions(self, config: ExperimentConfig) -> list:
        """The conditions evaluated, baseline and controls included, in report order."""

    @abstractmethod
    def evaluate(self, prepared: Any, conditions: list) -> Any:
        """Every condition's per-item scores."""

    @abstractmethod
    def summarize(self, config: ExperimentConfig, prepared: Any, evaluated: Any, conditions: list) -> dict:
        """results.json's sections: validity, effects with their intervals, and the protocol's diagnoses."""

    @abstractmethod
    def judge(self, results: dict) -> Result:
        """The verdict on the protocol's hypothesis, with the tables the report shows."""

    @abstractmethod
    def header(self, config: ExperimentConfig, pair) -> dict:
        """results.json's sections that describe the models and the sample, before the results."""

    @abstractmethod
    def figure(self, results: dict, path: Path) -> None: ...

    @abstractmethod
    def write_artifacts(self, staging: Path, outcome: Outcome) -> None:
        """Files of the run folder beyond results, config, report, figure and items.parquet (bridges,
        predictions)."""

    @abstractmethod
    def item_table(self, outcome: Outcome):
        """One row per seed, item and condition (a pandas DataFrame): what ``items.parquet`` holds."""

    @abstractmethod
    def folder_tag(self, config: ExperimentConfig) -> str:
        """What the default run folder's name adds to pair, models and layers."""

    # The analyses (``python -m mi_bridge.analyses``): a protocol without them keeps these defaults.

    analysis_entry: ClassVar[str | None] = None
    """The function an analysis script defines for this protocol (``analyze``, ``analyze_seed``)."""

    def analysis(self, module) -> Any:
        """``module``'s entry point for this protocol, or None where the script does not apply."""
        return getattr(module, self.analysis_entry, None) if self.analysis_entry else None

    def sweep_numbers(self, results: dict) -> dict:
        """A run's numbers in a sweep's summary (sweep.json, its heatmaps): at least its resolved layers."""
        return {"layers": results["layers"]}

    def not_applicable(self, module) -> str:
        """Why ``module`` does not run under this protocol (asked where ``analysis`` is None)."""
        return f"it defines no {self.analysis_entry or 'entry'} for the {self.name} protocol"

    def analysis_context(self, config: ExperimentConfig, options, store=None) -> Any:
        """What the analysis scripts read: the loaded pair, the layers, the items."""
        raise UserError(f"the analyses are not built for the {self.name} protocol")

    def qualify(self, module, result: Result, site: dict) -> Result:
        """An analysis's result, with its verdict withheld where the site or the task cannot support it."""
        return result

    def run(self, config: ExperimentConfig, pair, sender_layer: int, receiver_layer: int, store) -> Outcome:
        prepared = self.prepare(config, pair, sender_layer, receiver_layer, store)
        conditions = self.conditions(config)
        evaluated = self.evaluate(prepared, conditions)
        return Outcome(self.summarize(config, prepared, evaluated, conditions), evaluated)


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name`` (``config.PROTOCOLS``), imported now."""
    module, cls = protocol_options(name).protocol.split(":")
    return getattr(importlib.import_module(module), cls)()
