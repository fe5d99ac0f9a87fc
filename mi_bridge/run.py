"""``python -m mi_bridge.run``: the transfer experiment end to end, with a rich report and a run folder.

Examples:
    python -m mi_bridge.run                                   # toy pair, defaults
    HF_HUB_OFFLINE=1 python -m mi_bridge.run --pair pythia    # pythia-160m -> pythia-410m
    python -m mi_bridge.run --config runs/<run>/config.json   # repeat a run
"""

from __future__ import annotations

import sys
from pathlib import Path

from mi_bridge import cli
from mi_bridge.config import ExperimentConfig
from mi_bridge.protocols.base import Protocol, get_protocol
from mi_bridge.report import render as report


def build_parser():
    return cli.build_parser("python -m mi_bridge.run", __doc__.split("\n\n")[0])


def default_out(config: ExperimentConfig, protocol: Protocol, sender_layer: int, receiver_layer: int) -> Path:
    name = f"{config.pair}-{config.sender_name}-{config.receiver_name}-L{sender_layer}-L{receiver_layer}"
    return Path("runs") / f"{name}-{protocol.folder_tag(config)}".replace("/", "_")


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        config = cli.config_from_args(args)
        cli.check_writable(Path(config.out) if config.out else Path("runs") / "probe")
        return run(config, use_cache=not args.no_cache, full=args.full)

    return cli.one_line_errors(
        body, "nothing was written to the run folder (cached models and activations are kept)"
    )


def run(config: ExperimentConfig, use_cache: bool = True, full: bool = False) -> int:
    from mi_bridge.models.loading import load_pair

    pair = load_pair(config)  # checks every input first (without TransformerLens), then loads
    run_loaded(config, pair, use_cache, full)
    return 0


def run_loaded(
    config: ExperimentConfig, pair, use_cache: bool = True, full: bool = False, quiet: bool = False
) -> tuple[Path, dict]:
    """One run on an already loaded pair (a sweep's worker loads it once for many cells): the run folder
    published, and ``(folder, results)``. ``quiet`` skips the terminal report."""
    # Heavy imports after the checks (load_pair has made them), so that bad input fails fast.
    from mi_bridge.core.store import default_store
    from mi_bridge.models.loading import record_identities, resolve_layers

    protocol = get_protocol(config.protocol)
    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    folder = Path(config.out) if config.out else default_out(config, protocol, sender_layer, receiver_layer)
    cli.check_writable(folder)
    outcome = protocol.run(config, pair, sender_layer, receiver_layer, default_store(use_cache))
    results = {
        "config": config.to_dict(),
        "layers": {"sender": sender_layer, "receiver": receiver_layer},
        "device": config.extra["device"],
        **protocol.header(config, pair),
        "versions": cli.versions(),
        **outcome.results,
    }
    result = protocol.judge(results)
    results |= {"hypothesis": result.hypothesis, "verdict_label": result.verdict}
    if not quiet:
        report.render_result(result, full=full)

    def write_rest(staging: Path) -> None:
        protocol.figure(results, staging / "figure.png")
        (staging / "report.md").write_text(report.result_markdown(result, figure="figure.png"))
        protocol.write_artifacts(staging, outcome)

    cli.publish_run(folder, config, results, write_rest)
    if not quiet:
        report.console.print(f"run folder: {folder}")
    return folder, results


if __name__ == "__main__":
    sys.exit(main())
