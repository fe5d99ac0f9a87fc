"""What every analysis script shares: flags, models, seeds, cached activations, report and run folder,
so each script is only its hypothesis, its conditions and its verdict (see ``mi_bridge.analyses``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge import cli
from mi_bridge.config import ExperimentConfig, UserError
from mi_bridge.core.store import ActivationStore
from mi_bridge.protocols.base import get_protocol
from mi_bridge.report import render as report
from mi_bridge.report.result import Result

# ---------------------------------------------------------------------------------------------------------
# Helpers the scripts share


def per_item_cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Running scripts


def build_parser(prog: str, description: str, modules: Sequence[ModuleType]):
    """The config flags plus every script's own. Scripts that share flags (the usability bridge's
    training settings) declare them through one library function; "resolve" lets both declare them."""
    parser = cli.build_parser(prog, description, conflict_handler="resolve")
    for module in modules:
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    return parser


def prepare_context(
    config: ExperimentConfig, options: argparse.Namespace, store: ActivationStore | None = None
):
    """The protocol's analysis context: the loaded pair, the layers and what the scripts read."""
    return get_protocol(config.protocol).analysis_context(config, options, store)


def applies(module: ModuleType, protocol: str) -> bool:
    """Every script reads the split protocol (``analyze``); under ``seed`` only those with ``analyze_seed``."""
    return hasattr(module, get_protocol(protocol).analysis_entry)


def not_applicable(module: ModuleType, protocol: str) -> str:
    return f"{module.NAME} does not apply under --protocol {protocol}: {module.SEED_PROTOCOL}"


def check_applies(module: ModuleType, protocol: str) -> None:
    """Before any model loads: a script that does not apply to the protocol says why, in one line."""
    if not applies(module, protocol):
        raise UserError(not_applicable(module, protocol))


def default_folder(name: str, ctx) -> Path:
    config = ctx.config
    tag = get_protocol(config.protocol).folder_tag(config)
    return Path("runs") / "analyses" / f"{name}-{config.pair}-L{ctx.sender_layer}-L{ctx.receiver_layer}-{tag}"


def analyze_and_publish(module: ModuleType, ctx, folder: Path) -> Result:
    cli.check_writable(folder)
    site = ctx.site()
    report.render_site(site)  # before any effect: what this site can show at all
    protocol = get_protocol(ctx.config.protocol)
    result = protocol.qualify(module, getattr(module, protocol.analysis_entry)(ctx), site)
    report.render_result(result)

    config = replace(ctx.config, out=str(folder))  # config.json repeats exactly this script run
    payload = {
        "analysis": result.to_dict(),
        "config": config.to_dict(),
        "layers": {"sender": ctx.sender_layer, "receiver": ctx.receiver_layer},
        "device": config.extra["device"],
        "site": site,
        "options": {k: v for k, v in vars(ctx.options).items() if _is_json(v)},
        "versions": cli.versions(),
    }

    def write_rest(staging: Path) -> None:
        module.plot(result, staging / "figure.png")
        (staging / "report.md").write_text(
            report.result_markdown(result, figure="figure.png", context=report.site_line(site))
        )

    cli.publish_run(folder, config, payload, write_rest)
    report.console.print(f"{module.NAME}: {folder}")
    return result


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def run_script(module: ModuleType, argv: list[str] | None = None) -> int:
    """``main`` of every script: one clear line and exit 2 on bad input."""

    def body() -> int:
        options = build_parser(
            f"python -m mi_bridge.analyses {module.NAME}", module.HYPOTHESIS, [module]
        ).parse_args(argv)
        config = cli.config_from_args(options)
        check_applies(module, config.protocol)
        if config.out:
            cli.check_writable(Path(config.out))
        ctx = prepare_context(config, options)
        folder = Path(config.out) if config.out else default_folder(module.NAME, ctx)
        analyze_and_publish(module, ctx, folder)
        return 0

    return cli.one_line_errors(body, "nothing was written to the run folder (cached activations are kept)")


# ---------------------------------------------------------------------------------------------------------
# python -m mi_bridge.analyses


if __name__ == "__main__":
    # The scripts import this module as mi_bridge.analyses: run that copy, not a second one as __main__.
    from mi_bridge.analyses.runner import main as run_named

    sys.exit(run_named())
