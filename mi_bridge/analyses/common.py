"""What every analysis script shares: flags, models, seeds, cached activations, report and run folder,
so each script is only its hypothesis, its conditions and its verdict (see ``mi_bridge.analyses``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge import cli
from mi_bridge.config import ExperimentConfig
from mi_bridge.core.store import ActivationStore
from mi_bridge.errors import UserError
from mi_bridge.files import write_parquet
from mi_bridge.protocols.base import get_protocol
from mi_bridge.report import render as report
from mi_bridge.report.result import Result
from mi_bridge.run_folder import check_new, default_name, resolved

# ---------------------------------------------------------------------------------------------------------
# Helpers the scripts share


def per_item_cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Running scripts


def build_parser(prog: str, description: str, modules: Sequence[ModuleType], epilog: str | None = None):
    """The config flags plus every script's own. Scripts that share flags (the usability bridge's
    training settings) declare them through one library function; "resolve" lets both declare them."""
    where = "Analysis folder; default runs/analyses/<name>-<pair>-<models>-L<ls>-L<lr>-<tag>-<hash of the settings>"
    parser = cli.build_parser(prog, description, epilog, {"out": where}, conflict_handler="resolve")
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
    return get_protocol(protocol).analysis(module) is not None


def not_applicable(module: ModuleType, protocol: str) -> str:
    return f"{module.NAME} does not apply under --protocol {protocol}: {get_protocol(protocol).not_applicable(module)}"


def check_applies(module: ModuleType, protocol: str) -> None:
    """Before any model loads: a script that does not apply to the protocol says why, in one line."""
    if not applies(module, protocol):
        raise UserError(not_applicable(module, protocol))


ITEMS = "items"
"""The key of a result's data under which an analysis hands back its per-item table (a pandas DataFrame,
written to ``items.parquet``)."""
COMMAND_FLAGS = ("config", "no_cache", "full", "overwrite")
"""Flags that do not change what an analysis computes (nor its folder's name)."""


def script_options(options: argparse.Namespace) -> dict:
    """The scripts' own flags (e.g. the usability bridge's training settings), as JSON values."""
    config_fields = cli.config_flag_names() | set(ExperimentConfig.__dataclass_fields__)
    return {
        k: v
        for k, v in vars(options).items()
        if k not in config_fields and k not in COMMAND_FLAGS and _is_json(v)
    }


def resolved_config(config: ExperimentConfig) -> ExperimentConfig:
    """Every input checked without weights, and the config with its defaults made explicit (layers, model
    names, revisions, bridge kind): what the folder name hashes and config.json records."""
    from mi_bridge.models.loading import check_pair

    checked = check_pair(config)
    return resolved(config, checked.sender_layer, checked.receiver_layer)


def default_folder(label: str, config: ExperimentConfig, options: argparse.Namespace, **more) -> Path:
    """``runs/analyses/<label>-<pair>-<models>-L<ls>-L<lr>-<tag>-<hash>`` for a resolved config; the hash
    covers the config, the scripts' own flags and ``more``: analyses of other settings never share one."""
    tag = get_protocol(config.protocol).folder_tag(config)
    name = default_name(config, tag, options=script_options(options), **more)
    return Path("runs") / "analyses" / f"{label}-{name}"


def analyze_and_publish(module: ModuleType, ctx, folder: Path, overwrite: bool = False) -> Result:
    cli.check_writable(folder)
    site = ctx.site()
    report.render_site(site)  # before any effect: what this site can show at all
    protocol = get_protocol(ctx.config.protocol)
    result = protocol.qualify(module, protocol.analysis(module)(ctx), site)
    items = result.data.pop(ITEMS, None)  # a table, written beside results.json rather than into it
    report.render_result(result)

    # config.json repeats exactly this script run: the defaults made explicit, the layers that ran
    config = replace(resolved(ctx.config, ctx.sender_layer, ctx.receiver_layer), out=str(folder))
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
        if items is not None:
            write_parquet(staging / "items.parquet", items)
        module.plot(result, staging / "figure.png")
        (staging / "report.md").write_text(
            report.result_markdown(result, figure="figure.png", context=report.site_line(site))
        )

    cli.publish_run(folder, config, payload, write_rest, overwrite)
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
        config = resolved_config(config)
        folder = Path(config.out) if config.out else default_folder(module.NAME, config, options)
        check_new(folder, options.overwrite)
        ctx = prepare_context(config, options)
        analyze_and_publish(module, ctx, folder, options.overwrite)
        return 0

    return cli.one_line_errors(body, "nothing was written to the run folder (cached activations are kept)")


# ---------------------------------------------------------------------------------------------------------
# python -m mi_bridge.analyses
