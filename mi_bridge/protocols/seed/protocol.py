"""The seed paper's protocol as released (``--protocol seed``): both models read the same prompt, and the
translated states replace the receiver's during prefill (``experiment``, ``audit``, ``report``)."""

from __future__ import annotations

from pathlib import Path

from mi_bridge import files
from mi_bridge.config import ExperimentConfig
from mi_bridge.protocols.base import Outcome, Protocol
from mi_bridge.protocols.seed import report
from mi_bridge.protocols.seed.experiment import CONDITIONS, prepare_seed_run, run_conditions
from mi_bridge.protocols.seed.items import item_table
from mi_bridge.protocols.seed.summary import summarize
from mi_bridge.report.result import Result


class SeedProtocol(Protocol):
    name = "seed"

    def prepare(self, config: ExperimentConfig, pair, sender_layer: int, receiver_layer: int, store):
        # The seed protocol caches nothing: its states are per position and per prompt length.
        return prepare_seed_run(config, pair, sender_layer, receiver_layer)

    def conditions(self, config: ExperimentConfig) -> list:
        return list(CONDITIONS)

    def evaluate(self, prepared, conditions: list) -> dict:
        run, bridges, _ = prepared
        outcomes, strengths, predictions, meta = run_conditions(run, bridges, conditions)
        answers = [item.answer for item in run.items]
        layers = {"sender_layer": run.sender_layer, "receiver_layer": run.receiver_layer}
        return {
            "outcomes": outcomes,
            "strengths": strengths,
            "predictions": predictions,
            "meta": meta,
            "bridges": bridges,
            "items": item_table(outcomes, predictions, meta, answers, **layers),
        }

    def summarize(self, config: ExperimentConfig, prepared, evaluated: dict, conditions: list) -> dict:
        run, _, fit_section = prepared
        results = summarize(config, evaluated["outcomes"], evaluated["strengths"], evaluated["meta"], run)
        results["bridge_fit"] = fit_section
        results["n_items"] = results["conditions"][0]["n"]
        return results

    def judge(self, results: dict) -> Result:
        return report.seed_result(results)

    def header(self, config: ExperimentConfig, pair) -> dict:
        return {"models": {"sender": {"name": pair.sender_name}, "receiver": {"name": pair.receiver_name}}}

    def figure(self, results: dict, path: Path) -> None:
        report.conditions_figure(results, path)

    def write_artifacts(self, staging: Path, outcome: Outcome) -> None:
        files.write_json(staging / "predictions.json", outcome.evaluated["predictions"])
        for kind, fitted in outcome.evaluated["bridges"].items():
            for bridge in fitted:
                bridge.translate.save(staging / "bridge" / kind / f"seed{bridge.seed}")

    def item_table(self, outcome: Outcome):
        return outcome.evaluated["items"]

    def folder_tag(self, config: ExperimentConfig) -> str:
        return f"seed-{config.options.resolved().bridge}"

    analysis_entry = "analyze_seed"

    def not_applicable(self, module) -> str:
        return getattr(module, "NOT_FOR_SEED_PROTOCOL", super().not_applicable(module))

    def analysis_context(self, config: ExperimentConfig, options, store=None):
        from mi_bridge.protocols.seed.analysis import prepare_seed_context

        return prepare_seed_context(config, options)

    def qualify(self, module, result: Result, site: dict) -> Result:
        from mi_bridge.protocols.seed.analysis import qualify_by_validity

        return qualify_by_validity(result, site)
