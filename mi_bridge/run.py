"""``python -m mi_bridge.run``: the transfer experiment end to end, with a rich report and a run folder.

Examples:
    python -m mi_bridge.run                                   # toy pair, defaults
    HF_HUB_OFFLINE=1 python -m mi_bridge.run --pair pythia    # pythia-160m -> pythia-410m
    python -m mi_bridge.run --config runs/<run>/config.json   # repeat a run
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import fields
from importlib import metadata
from pathlib import Path

from mi_bridge import report
from mi_bridge.config import DTYPES, PAIRS, POSITIONS, TARGETS, ExperimentConfig, UserError
from mi_bridge.files import publish_folder


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit code 2 (no usage dump)."""

    def error(self, message: str):
        raise UserError(message)


def build_parser(prog: str = "python -m mi_bridge.run", description: str | None = None) -> OneLineParser:
    p = OneLineParser(prog=prog, description=description or __doc__.split("\n\n")[0])
    defaults = ExperimentConfig()
    p.add_argument("--config", type=Path, help="repeat a run from its config.json (other flags override it)")
    p.add_argument("--pair", choices=PAIRS, help=f"model pair (default {defaults.pair})")
    p.add_argument("--sender", help="sender model name (default: pythia-160m / toy-sender)")
    p.add_argument("--receiver", help="receiver model name (default: pythia-410m / toy-receiver)")
    p.add_argument("--sender-layer", type=int, help="sender resid_post layer (default: middle)")
    p.add_argument(
        "--receiver-layer", type=int, help="receiver resid_post layer to inject into (default: middle)"
    )
    p.add_argument("--position", choices=POSITIONS, help=f"injection site (default {defaults.position})")
    p.add_argument("--target", choices=TARGETS, help=f"bridge target (default {defaults.target})")
    p.add_argument(
        "--alphas", type=_alphas, help="additive strengths, comma-separated (default 0.25,0.5,1,2)"
    )
    p.add_argument("--k", type=int, help=f"facts per hop (default {defaults.k})")
    p.add_argument("--n-items", type=int, help=f"items per seed (default {defaults.n_items})")
    p.add_argument("--seeds", type=int, help=f"number of seeds (default {defaults.seeds})")
    p.add_argument("--batch-size", type=int, help=f"items per forward pass (default {defaults.batch_size})")
    p.add_argument("--n-bootstrap", type=int, help=f"bootstrap resamples (default {defaults.n_bootstrap})")
    p.add_argument(
        "--sender-revision", help="Hugging Face revision of the sender, e.g. step143000 (default main)"
    )
    p.add_argument("--receiver-revision", help="Hugging Face revision of the receiver (default main)")
    p.add_argument(
        "--dtype", choices=DTYPES, help=f"model precision (default {defaults.dtype}; float16 needs a GPU)"
    )
    p.add_argument("--device", help=f"torch device (default {defaults.device})")
    p.add_argument(
        "--out", help="run folder (default runs/<pair>-<sender>-<receiver>-L<ls>-L<lr>-<site>-<target>)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached activations")
    return p


def _alphas(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    data: dict = {}
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read config {args.config}: {err}") from None
        if not isinstance(data, dict):
            raise UserError(f"config {args.config} is not a JSON object")
    known = {f.name for f in fields(ExperimentConfig)}
    for key, value in vars(args).items():
        if key in known and value is not None:  # analysis scripts add flags of their own
            data[key] = value
    return ExperimentConfig.from_dict(data)


def check_writable(folder: Path) -> None:
    """Fail before any work if the run folder cannot be created and written."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".mi_bridge-probe-"):
            pass
    except OSError as err:
        raise UserError(f"output folder {folder} is not writable: {err.strerror or err}") from None
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output path {folder} exists and is not a folder")


def versions() -> dict:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "transformer-lens", "transformers", "mi_bridge")},
        "git_revision": git_revision(),
    }


def git_revision() -> str | None:
    """The checkout's commit (with '+dirty' for uncommitted changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_folder(folder: Path, results: dict, seeds, config: ExperimentConfig) -> None:
    def write(staging: Path) -> None:
        (staging / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        (staging / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        report.conditions_figure(results, staging / "conditions.png")
        (staging / "report.md").write_text(report.markdown(results, figure="conditions.png"))
        for i, seed in enumerate(seeds):
            seed.bridge.save(staging / "bridge" / f"seed{i}")

    publish_folder(folder, write)


def default_out(config: ExperimentConfig, sender_layer: int, receiver_layer: int) -> Path:
    name = f"{config.pair}-{config.sender_name}-{config.receiver_name}-L{sender_layer}-L{receiver_layer}"
    return Path("runs") / f"{name}-{config.position}-{config.target}".replace("/", "_")


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        config = config_from_args(args)
        check_writable(Path(config.out) if config.out else Path("runs") / "probe")
        return run(config, use_cache=not args.no_cache)

    return report.one_line_errors(
        body, "nothing was written to the run folder (cached models and activations are kept)"
    )


def run(config: ExperimentConfig, use_cache: bool = True) -> int:
    # Heavy imports after argument checks, so that bad flags fail fast.
    from mi_bridge.experiment import run_experiment
    from mi_bridge.models import load_pair, record_identities, resolve_layers
    from mi_bridge.prepare import default_store

    pair = load_pair(config)  # checks every input first, then loads
    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    folder = Path(config.out) if config.out else default_out(config, sender_layer, receiver_layer)
    check_writable(folder)
    results, seeds = run_experiment(config, pair, sender_layer, receiver_layer, default_store(use_cache))
    results = {
        "config": config.to_dict(),
        "layers": {"sender": sender_layer, "receiver": receiver_layer},
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
        "versions": versions(),
        **results,
    }
    report.render(results)
    write_run_folder(folder, results, seeds, config)
    report.console.print(f"run folder: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
