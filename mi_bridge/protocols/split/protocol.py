"""The split protocol (the default): the sender reads what the receiver's prompt lacks, and the bridge
hands its state across (``experiment``, ``diagnosis``, ``report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mi_bridge.config import ExperimentConfig
from mi_bridge.core.evaluate import select_conditions, standard_conditions
from mi_bridge.protocols.base import Outcome, Protocol
from mi_bridge.protocols.split import figure, report, sections
from mi_bridge.protocols.split.experiment import SITE_CONDITIONS, evaluate_seeds, summarize
from mi_bridge.protocols.split.items import SeedItems, layer_table, typed
from mi_bridge.protocols.split.prepare import seed_contexts
from mi_bridge.protocols.split.sections import SplitRun
from mi_bridge.report.result import Result


@dataclass
class Evaluated:
    """The run as its sections read it (every seed's scores and bridge, each section's data), and the
    per-item table."""

    run: SplitRun
    items: pd.DataFrame


class SplitProtocol(Protocol):
    name = "split"

    def prepare(self, config: ExperimentConfig, pair, sender_layer: int, receiver_layer: int, store):
        return seed_contexts(config, pair, store), sender_layer, receiver_layer

    def conditions(self, config: ExperimentConfig) -> list:
        # The site diagnosis reads the replace-mode ceilings, whichever families are chosen.
        keep = {c.name for c in SITE_CONDITIONS}
        chosen = (config.options.condition_families, config.options.condition_modes)
        return select_conditions(standard_conditions(config.options.alphas), *chosen, keep=keep)

    def evaluate(self, prepared, conditions: list) -> Evaluated:
        contexts, sender_layer, receiver_layer = prepared
        active = sections.enabled(contexts[0].config.options)
        seeds = evaluate_seeds(contexts, sender_layer, receiver_layer, conditions, active)
        run = SplitRun(contexts, seeds, sender_layer, receiver_layer, conditions, active)
        for section in active:
            run.data[section.key] = section.evaluate(run)
        items = [SeedItems.of(ctx) for ctx in contexts]
        position = contexts[0].config.options.position
        where = {"sender_layer": sender_layer, "position": position}
        frames = [
            layer_table(
                items, [s.scores for s in seeds], conditions, part="run", layer=receiver_layer, **where
            )
        ]
        frames += [frame for section in active for frame in section.item_rows(items, run, position)]
        return Evaluated(run, typed(pd.concat(frames, ignore_index=True)))

    def summarize(self, config: ExperimentConfig, prepared, evaluated: Evaluated, conditions: list) -> dict:
        _, sender_layer, receiver_layer = prepared
        return summarize(config, evaluated.run.seeds, conditions, receiver_layer, sender_layer, evaluated.run)

    def judge(self, results: dict) -> Result:
        return report.transfer_result(results)

    def header(self, config: ExperimentConfig, pair) -> dict:
        roles = (("sender", pair.sender_name, pair.sender), ("receiver", pair.receiver_name, pair.receiver))
        return {
            "models": {
                role: {
                    "name": name,
                    "n_layers": model.cfg.n_layers,
                    "d_model": model.cfg.d_model,
                    "identity": config.extra["models"][role],
                }
                for role, name, model in roles
            },
            "n_test": config.n_test,
        }

    def figure(self, results: dict, path: Path) -> None:
        figure.conditions_figure(results, path)

    def write_artifacts(self, staging: Path, outcome: Outcome) -> None:
        run = outcome.evaluated.run
        for seed in run.seeds:  # named by the seed it was drawn with (--seed shifts them)
            seed.bridge.save(staging / "bridge" / f"seed{seed.bridge.metadata['seed']}")
        for section in run.active:
            section.artifacts(staging, run)

    def item_table(self, outcome: Outcome) -> pd.DataFrame:
        return outcome.evaluated.items

    def folder_tag(self, config: ExperimentConfig) -> str:
        return f"{config.options.position}-{config.options.target}"

    analysis_entry = "analyze"

    def sweep_numbers(self, results: dict) -> dict:
        """Resolved layers, site class, and (Δ accuracy with its CI) the translated condition and the
        context-free ceiling as the decomposition reads them (the best surviving translated condition
        with its Holm p, else the best by mean; the one context-free ceiling, ``diagnosis.ceiling``),
        and the normalized cosine."""
        from mi_bridge.protocols.split.diagnosis import best_translated, ceiling, holm_p

        numbers = super().sweep_numbers(results)
        if "site" not in results:
            return numbers
        numbers["site_class"] = results["site"]["class"]
        conditions = results["conditions"]
        chosen = {"translated": best_translated(conditions), "context_free": ceiling(conditions)}
        for key, summary in chosen.items():
            numbers[key] = {
                "condition": summary["name"],
                "mean": summary["delta_accuracy"],
                "ci": summary["delta_accuracy_ci"],
            }
        numbers["translated"]["holm_p"] = holm_p(chosen["translated"], conditions)
        numbers["normalized_cosine"] = {"mean": results["bridge"]["normalized_cosine"]["mean"]}
        return numbers

    def analysis_context(self, config: ExperimentConfig, options, store=None):
        from mi_bridge.protocols.split.analysis import prepare_split_context

        return prepare_split_context(config, options, store)

    def qualify(self, module, result: Result, site: dict) -> Result:
        from mi_bridge.protocols.split.analysis import qualify_by_site

        return qualify_by_site(module, result, site)
