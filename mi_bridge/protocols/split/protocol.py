"""The split protocol (the default): the sender reads what the receiver's prompt lacks, and the bridge
hands its state across (``experiment``, ``diagnosis``, ``report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mi_bridge.config import ExperimentConfig
from mi_bridge.core.evaluate import select_conditions, standard_conditions
from mi_bridge.protocols.base import Outcome, Protocol
from mi_bridge.protocols.split import figure, report
from mi_bridge.protocols.split.experiment import SITE_CONDITIONS, SeedData, evaluate_seeds, summarize
from mi_bridge.protocols.split.items import SeedItems, item_table, typed
from mi_bridge.protocols.split.prepare import seed_contexts
from mi_bridge.report.result import Result


@dataclass
class Evaluated:
    """Every seed's scores, bridge and site scan, and the per-item table of them."""

    seeds: list[SeedData]
    items: pd.DataFrame
    kv: list | None = None
    """Per seed, the KV channel's ``SeedKV`` (with ``--kv-channel``)."""


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
        seeds = evaluate_seeds(contexts, sender_layer, receiver_layer, conditions)
        items = [SeedItems.of(ctx) for ctx in contexts]
        where = {"sender_layer": sender_layer, "receiver_layer": receiver_layer}
        position = contexts[0].config.options.position
        table = item_table(items, seeds, conditions, position=position, **where)
        if not contexts[0].config.options.kv_channel:
            return Evaluated(seeds, table)
        from mi_bridge.protocols.split.kv_run import kv_item_table, run_kv

        kv = run_kv(contexts, seeds, receiver_layer)
        table = pd.concat([table, kv_item_table(items, kv, sender_layer, receiver_layer, position)])
        return Evaluated(seeds, typed(table), kv)

    def summarize(self, config: ExperimentConfig, prepared, evaluated: Evaluated, conditions: list) -> dict:
        _, sender_layer, receiver_layer = prepared
        results = summarize(config, evaluated.seeds, conditions, receiver_layer, sender_layer)
        if evaluated.kv is not None:
            from mi_bridge.protocols.split.kv_run import summarize_kv

            results["kv_channel"] = summarize_kv(config, results, evaluated.kv)
        return results

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
        for seed in outcome.evaluated.seeds:  # named by the seed it was drawn with (--seed shifts them)
            index = seed.bridge.metadata["seed"]
            seed.bridge.save(staging / "bridge" / f"seed{index}")
            if seed.second_site is not None:  # the second site's own bridge, fitted to its layer
                seed.second_site.bridge.save(
                    staging / "bridge" / f"second-site-L{seed.second_site.layer}" / f"seed{index}"
                )
        for seed, kv in zip(outcome.evaluated.seeds, outcome.evaluated.kv or (), strict=False):
            for source in kv.sources.values():  # by kind: kv-linear, kv-fuser, kv-prefix
                source.save(staging / "bridge" / source.kind / f"seed{seed.bridge.metadata['seed']}")

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
