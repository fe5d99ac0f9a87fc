"""``python -m mi_bridge.run``: the transfer experiment end to end, with a rich report and a run folder.

Examples:
    python -m mi_bridge.run                                   # toy pair, defaults
    HF_HUB_OFFLINE=1 python -m mi_bridge.run --pair pythia    # pythia-160m -> pythia-410m
    python -m mi_bridge.run --config runs/<run>/config.json --out runs/again   # repeat a run
    python -m mi_bridge.run --seed 3 --conditions translated,controls          # other seeds, fewer conditions
    python -m mi_bridge.run --kv-channel                      # also the KV-cache channel (docs/kv_channel.md)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mi_bridge import cli, files
from mi_bridge.config import ExperimentConfig
from mi_bridge.protocols.base import Outcome, get_protocol
from mi_bridge.report import render as report
from mi_bridge.report.result import Result
from mi_bridge.run_folder import check_new, default_name, resolved

if TYPE_CHECKING:
    import pandas as pd


def build_parser():
    description, _, examples = __doc__.partition("\n\n")
    return cli.build_parser("python -m mi_bridge.run", description, epilog=examples)


@dataclass
class RunResult:
    """One run, computed and not written: everything its run folder would hold."""

    config: ExperimentConfig
    """The resolved config (layers, model names, revisions, bridge kind), with the models' exact
    checkpoints and the device under ``extra``: what config.json records."""
    results: dict
    """results.json: validity, site, decomposition, bridge fit, every condition with its CI, verdict."""
    report: Result
    """The verdict with its explanation and tables (``mi_bridge.report.render.render_result`` shows it)."""
    items: pd.DataFrame
    """The per-item table (a pandas DataFrame), what items.parquet holds."""
    outcome: Outcome
    """The protocol's own data: per-seed scores and the fitted bridges."""

    @property
    def verdict(self) -> str:
        """``supported``, ``not supported`` or ``inconclusive``."""
        return self.report.verdict

    def condition(self, name: str) -> dict:
        """One condition's summary from results.json (means, Δ vs baseline with CIs, per seed)."""
        found = {c["name"]: c for c in self.results["conditions"]}
        if name not in found:
            raise KeyError(f"no condition {name!r}; the run has {', '.join(found)}")
        return found[name]


def output_folder(config: ExperimentConfig) -> Path:
    """``config.out``, or ``runs/<pair>-<models>-<layers>-<protocol tag>-<config hash>`` for a resolved
    config: runs that differ in any setting get different default folders."""
    if config.out:
        return Path(config.out)
    return Path("runs") / default_name(config, get_protocol(config.protocol).folder_tag(config))


def compute(config: ExperimentConfig, pair, use_cache: bool = True) -> RunResult:
    """One run on a loaded pair, in memory: nothing printed but progress bars, nothing written but the
    activation cache (``use_cache``). A sweep's worker calls this for many cells of one pair."""
    # Heavy imports here (load_pair has made them), so that bad input fails before them.
    from mi_bridge.core.store import default_store
    from mi_bridge.models.loading import record_identities, resolve_layers

    protocol = get_protocol(config.protocol)
    config = record_identities(resolved(config, *resolve_layers(config, pair)), pair)
    layers = config.sender_layer, config.receiver_layer
    outcome = protocol.run(config, pair, *layers, default_store(use_cache))
    results = {
        "config": config.to_dict(),
        "layers": {"sender": layers[0], "receiver": layers[1]},
        "device": config.extra["device"],
        **protocol.header(config, pair),
        "versions": cli.versions(),
        **outcome.results,
    }
    judged = protocol.judge(results)
    results |= {"hypothesis": judged.hypothesis, "verdict_label": judged.verdict}
    return RunResult(config, results, judged, protocol.item_table(outcome), outcome)


def publish(run: RunResult, folder: Path, overwrite: bool = False) -> None:
    """The run folder of a computed run: config.json, results.json, report.md, figure.png, items.parquet
    and the protocol's artifacts (bridges), published whole; an existing folder only with ``overwrite``."""
    protocol = get_protocol(run.config.protocol)

    def write_rest(staging: Path) -> None:
        protocol.figure(run.results, staging / "figure.png")
        (staging / "report.md").write_text(report.result_markdown(run.report, figure="figure.png"))
        files.write_parquet(staging / "items.parquet", run.items)  # every protocol's per-item table
        protocol.write_artifacts(staging, run.outcome)

    cli.publish_run(folder, run.config, run.results, write_rest, overwrite)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        config = cli.config_from_args(args)
        config.options.check_run()
        from mi_bridge.models.loading import check_pair, load_pair

        checked = check_pair(config)  # every input check (without TransformerLens), before any work
        config = resolved(config, checked.sender_layer, checked.receiver_layer)
        folder = output_folder(config)
        check_new(folder, args.overwrite)
        run = compute(config, load_pair(config, checked), use_cache=not args.no_cache)
        report.render_result(run.report, full=args.full)
        publish(run, folder, args.overwrite)
        report.console.print(f"run folder: {folder}")
        return 0

    return cli.one_line_errors(
        body, "nothing was written to the run folder (cached models and activations are kept)"
    )


if __name__ == "__main__":
    sys.exit(main())
