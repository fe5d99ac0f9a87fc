"""``python -m mi_bridge.run``: the transfer experiment end to end, with a rich report and a run folder.

Examples:
    python -m mi_bridge.run                                   # toy pair, defaults
    HF_HUB_OFFLINE=1 python -m mi_bridge.run --pair pythia    # pythia-160m -> pythia-410m
    python -m mi_bridge.run --config runs/<run>/config.json   # repeat a run
"""

from __future__ import annotations

import sys
from pathlib import Path

from mi_bridge import cli, report
from mi_bridge.config import ExperimentConfig
from mi_bridge.result import Result


def build_parser():
    return cli.build_parser("python -m mi_bridge.run", __doc__.split("\n\n")[0])


def write_run_folder(folder: Path, result: Result, seeds, config: ExperimentConfig) -> None:
    results = result.data

    def write_rest(staging: Path) -> None:
        report.conditions_figure(results, staging / "figure.png")
        (staging / "report.md").write_text(report.result_markdown(result, figure="figure.png"))
        for i, seed in enumerate(seeds):
            seed.bridge.save(staging / "bridge" / f"seed{i}")

    cli.publish_run(folder, config, results, write_rest)


def default_out(config: ExperimentConfig, sender_layer: int, receiver_layer: int) -> Path:
    name = f"{config.pair}-{config.sender_name}-{config.receiver_name}-L{sender_layer}-L{receiver_layer}"
    if config.protocol == "seed":
        return Path("runs") / f"{name}-seed-{config.bridge_kind}".replace("/", "_")
    return Path("runs") / f"{name}-{config.position}-{config.target}".replace("/", "_")


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
    from mi_bridge.models import load_pair

    pair = load_pair(config)  # checks every input first (without TransformerLens), then loads
    run_loaded(config, pair, use_cache, full)
    return 0


def run_loaded(
    config: ExperimentConfig, pair, use_cache: bool = True, full: bool = False, quiet: bool = False
) -> tuple[Path, dict]:
    """One run on an already loaded pair (a sweep's worker loads it once for many cells): the run folder
    published, and ``(folder, results)``. ``quiet`` skips the terminal report."""
    # Heavy imports after the checks (load_pair has made them), so that bad input fails fast.
    from mi_bridge.experiment import run_experiment
    from mi_bridge.models import record_identities, resolve_layers
    from mi_bridge.prepare import default_store

    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    folder = Path(config.out) if config.out else default_out(config, sender_layer, receiver_layer)
    cli.check_writable(folder)
    if config.protocol == "seed":
        return folder, run_seed(config, pair, sender_layer, receiver_layer, folder, quiet)
    results, seeds = run_experiment(config, pair, sender_layer, receiver_layer, default_store(use_cache))
    results = {
        "config": config.to_dict(),
        "layers": {"sender": sender_layer, "receiver": receiver_layer},
        "device": config.extra["device"],
        "models": {
            role: {
                "name": name,
                "n_layers": model.cfg.n_layers,
                "d_model": model.cfg.d_model,
                "identity": config.extra["models"][role],
            }
            for role, name, model in (
                ("sender", pair.sender_name, pair.sender),
                ("receiver", pair.receiver_name, pair.receiver),
            )
        },
        "n_test": config.n_test,
        "versions": cli.versions(),
        **results,
    }
    result = report.transfer_result(results)
    results |= {"hypothesis": result.hypothesis, "verdict_label": result.verdict}
    if not quiet:
        report.render_result(result, full=full)
    write_run_folder(folder, result, seeds, config)
    if not quiet:
        report.console.print(f"run folder: {folder}")
    return folder, results


def run_seed(
    config: ExperimentConfig, pair, sender_layer: int, receiver_layer: int, folder: Path, quiet: bool = False
) -> dict:
    """The seed paper's protocol (``--protocol seed``): audit and table beside the published one."""
    from mi_bridge import seed_report
    from mi_bridge.seed_experiment import run_seed_experiment

    results, predictions = run_seed_experiment(config, pair, sender_layer, receiver_layer)
    results = {
        "config": config.to_dict(),
        "layers": {"sender": sender_layer, "receiver": receiver_layer},
        "device": config.extra["device"],
        "models": {"sender": {"name": pair.sender_name}, "receiver": {"name": pair.receiver_name}},
        "n_items": results["conditions"][0]["n"],
        "versions": cli.versions(),
        **results,
    }
    result = seed_report.seed_result(results)
    results |= {"hypothesis": result.hypothesis, "verdict_label": result.verdict}
    if not quiet:
        report.render_result(result)

    def write_rest(staging: Path) -> None:
        seed_report.conditions_figure(results, staging / "figure.png")
        (staging / "report.md").write_text(report.result_markdown(result, figure="figure.png"))
        cli.write_json(staging / "predictions.json", predictions)

    cli.publish_run(folder, config, results, write_rest)
    if not quiet:
        report.console.print(f"run folder: {folder}")
    return results


if __name__ == "__main__":
    sys.exit(main())
