"""The hypothesis scripts in ``analyses/``: their shared runner, and ``python -m mi_bridge.analyses``.

A script defines ``NAME``, ``HYPOTHESIS``, ``analyze(ctx) -> Result`` and ``plot(result, path)`` (and
optionally ``add_arguments(parser)``, and ``analyze_seed(ctx)`` where it runs under ``--protocol seed``,
else ``SEED_PROTOCOL``: why not). Everything else (flags, models, seeds, cached activations, report, run
folder) lives here, so every script reuses one copy of it. ``python analyses/<name>.py`` runs one script;
``python -m mi_bridge.analyses all`` (or names) runs several on one set of loaded models and one shared
cache of activations, with a combined ``report.md``:

    python -m mi_bridge.analyses all --pair toy
    python -m mi_bridge.analyses logit_lens norm_ablation --pair toy --seeds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge import cli, report
from mi_bridge.config import ExperimentConfig, UserError
from mi_bridge.evaluate import BASELINE, Condition, ItemScores, evaluate_conditions
from mi_bridge.experiment import summarize_conditions
from mi_bridge.files import write_text_atomic
from mi_bridge.models import ModelPair
from mi_bridge.prepare import ActivationStore, SeedContext, seed_contexts
from mi_bridge.report import condition_table  # noqa: F401 (the scripts' condition table)
from mi_bridge.result import VERDICTS, Result, Table  # noqa: F401 (what the scripts build)
from mi_bridge.seed_analysis import SeedProtocolContext, prepare_seed_context


@dataclass
class AnalysisContext:
    """What every analysis gets: the configuration, the models, the layers and the seeds."""

    config: ExperimentConfig
    pair: ModelPair
    sender_layer: int
    receiver_layer: int
    seeds: list[SeedContext]
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    _sites: dict[int, dict] = field(default_factory=dict, repr=False)

    def site(self, layer: int | None = None) -> dict:
        """The site diagnosis at a receiver layer (default: the configured one), computed once per layer."""
        layer = self.receiver_layer if layer is None else layer
        if layer not in self._sites:
            from mi_bridge.diagnosis import site_section
            from mi_bridge.experiment import SITE_CONDITIONS, site_vectors

            scores = [
                evaluate_on_test(self, seed, site_vectors(seed, layer), SITE_CONDITIONS, layer=layer)
                for seed in self.seeds
            ]
            follow = [seed.test.follow_index for seed in self.seeds]
            summaries = {
                s["name"]: s for s in summarize_conditions(self.config, scores, SITE_CONDITIONS, follow)
            }
            self._sites[layer] = site_section(summaries, layer)
        return self._sites[layer]


# ---------------------------------------------------------------------------------------------------------
# Helpers the scripts share


def translated_vectors(seed: SeedContext, sender_layer: int, receiver_layer: int, **bridge_options) -> Tensor:
    """The bridge's output for the seed's held-out items."""
    return seed.translated(seed.fit_bridge(sender_layer, receiver_layer, **bridge_options), sender_layer)


def evaluate_on_test(
    ctx: AnalysisContext,
    seed: SeedContext,
    vectors: dict[str, Float[Tensor, "n_test d_receiver"]],
    conditions: Sequence[Condition],
    *,
    layer: int | None = None,
    site: str | None = None,
) -> dict[str, ItemScores]:
    test = seed.test
    return evaluate_conditions(
        ctx.pair.receiver,
        seed.test_prompts(),
        test.answer_candidates,
        test.gold_index,
        layer=ctx.receiver_layer if layer is None else layer,
        position=seed.position(site),
        vectors=vectors,
        conditions=[BASELINE, *conditions] if BASELINE not in conditions else conditions,
        batch_size=ctx.config.batch_size,
        description=f"seed {seed.seed}: evaluating",
    )


def summarize_all(
    ctx: AnalysisContext, seed_scores: list[dict[str, ItemScores]], conditions: Sequence[Condition]
) -> list[dict]:
    return summarize_conditions(ctx.config, seed_scores, conditions)


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
    from mi_bridge.models import load_pair, record_identities, resolve_layers
    from mi_bridge.prepare import default_store

    if config.protocol == "seed":
        return prepare_seed_context(config, options)
    pair = load_pair(config)
    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    seeds = seed_contexts(config, pair, store or default_store(not getattr(options, "no_cache", False)))
    return AnalysisContext(config, pair, sender_layer, receiver_layer, seeds, options)


def applies(module: ModuleType, protocol: str) -> bool:
    """Every script reads the split protocol; under ``seed`` only those with ``analyze_seed``."""
    return protocol == "split" or hasattr(module, "analyze_seed")


def not_applicable(module: ModuleType, protocol: str) -> str:
    return f"{module.NAME} does not apply under --protocol {protocol}: {module.SEED_PROTOCOL}"


def check_applies(module: ModuleType, protocol: str) -> None:
    """Before any model loads: a script that does not apply to the protocol says why, in one line."""
    if not applies(module, protocol):
        raise UserError(not_applicable(module, protocol))


def default_folder(name: str, ctx: AnalysisContext | SeedProtocolContext) -> Path:
    config = ctx.config
    tag = f"{config.pair}-L{ctx.sender_layer}-L{ctx.receiver_layer}-{config.position}-{config.target}"
    if config.protocol == "seed":
        tag = f"{config.pair}-L{ctx.sender_layer}-L{ctx.receiver_layer}-seed-{config.bridge_kind}"
    return Path("runs") / "analyses" / f"{name}-{tag}"


def analyze_and_publish(
    module: ModuleType, ctx: AnalysisContext | SeedProtocolContext, folder: Path
) -> Result:
    cli.check_writable(folder)
    site = ctx.site()
    report.render_site(site)  # before any effect: what this site can show at all
    if ctx.config.protocol == "seed":
        result = qualify_by_validity(module.analyze_seed(ctx), site)
    else:
        result = qualify_by_site(module, module.analyze(ctx), site)
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
        (staging / "report.md").write_text(report.result_markdown(result, figure="figure.png", site=site))

    cli.publish_run(folder, config, payload, write_rest)
    report.console.print(f"{module.NAME}: {folder}")
    return result


def qualify_by_site(module: ModuleType, result: Result, site: dict) -> Result:
    """A script that declares ``SITE_DEPENDENT`` judges a cause (norm, direction, alignment) that only a
    pre-lookup site can isolate: elsewhere no sender vector can help at all, so its verdict is withheld."""
    if not getattr(module, "SITE_DEPENDENT", False) or site["class"] == "pre-lookup":
        return result
    return withheld(
        result,
        f"The site is {site['class']} (context-free ceiling {site['context_free']['mean']:+.3f}, follow rate "
        f"{site['follow_rate']['mean']:.3f}): no vector from the sender can help here, so this analysis cannot "
        "separate its cause from that",
        "Rerun at a pre-lookup layer.",
    )


def qualify_by_validity(result: Result, site: dict) -> Result:
    """Under the seed protocol: where the injection hook fails its exactness check (self-inject must equal
    no injection), or the oracle does not beat the baseline (the run's gate), no effect can be read."""
    if not site["hook_exact"]:
        mean = site["self_inject_logprob"]["mean"]
        return withheld(
            result, f"Self-inject differs from no injection ({mean:+.2e} in log p): the hook is not exact"
        )
    if site["validity"]["valid"]:
        return result
    gap, (low, high) = site["validity"]["gap"], site["validity"]["ci"]
    return withheld(
        result,
        f"The task is not valid here (oracle minus no injection {gap:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}]), "
        "so no effect can be read",
    )


def withheld(result: Result, reason: str, advice: str = "") -> Result:
    """``result`` with its verdict withheld (``inconclusive``), saying why and what it would have read."""
    if result.verdict == "inconclusive":
        return result
    note = f" {reason}; it would otherwise read '{result.verdict}'." + (f" {advice}" if advice else "")
    return Result(
        result.name, result.hypothesis, "inconclusive", result.explanation + note, result.tables, result.data
    )


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def run_script(module: ModuleType, argv: list[str] | None = None) -> int:
    """``main`` of every script: one clear line and exit 2 on bad input."""

    def body() -> int:
        options = build_parser(f"python analyses/{module.NAME}.py", module.HYPOTHESIS, [module]).parse_args(
            argv
        )
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

SCRIPTS_FOLDER = Path(__file__).resolve().parents[1] / "analyses"
ORDER = (
    "lookup_phase",
    "alignment_inflation",
    "logit_lens",
    "norm_ablation",
    "direction_ablation",
    "layer_sweep",
    "alignment_vs_usability",
    "usability_bridge",
    "learning_curve",
    "injection_site",
)


def load_script(name: str) -> ModuleType:
    if name not in ORDER:  # a known name only: nothing from the command line becomes a path
        raise UserError(f"no analysis script named {name!r} (known: {', '.join(ORDER)})")
    path = SCRIPTS_FOLDER / f"{name}.py"
    if not path.exists():
        raise UserError(f"analysis script {path} is missing from this checkout")
    spec = importlib.util.spec_from_file_location(f"mi_bridge_analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        names = []
        while argv and not argv[0].startswith("-"):
            names.append(argv.pop(0))
        if not names and {"-h", "--help"} & set(argv):  # help needs no names: show every script's flags
            names = ["all"]
        if not names:
            raise UserError(f"name the analyses to run, or 'all' ({', '.join(ORDER)})")
        everything = names == ["all"]
        modules = [load_script(name) for name in (ORDER if everything else names)]
        parser = build_parser(
            "python -m mi_bridge.analyses {all | NAME ...}", __doc__.split("\n\n")[0], modules
        )
        options = parser.parse_args(argv)
        config = cli.config_from_args(options)
        skipped = [m for m in modules if not applies(m, config.protocol)]
        if not everything:  # a script named explicitly that does not apply is bad input
            for module in skipped:
                check_applies(module, config.protocol)
        modules = [m for m in modules if m not in skipped]
        root = Path(config.out) if config.out else Path("runs") / "analyses" / f"all-{config.pair}"
        cli.check_writable(root)
        ctx = prepare_context(config, options)  # models loaded once, activations shared by every script
        root.mkdir(parents=True, exist_ok=True)
        results = []
        for module in modules:
            results.append(analyze_and_publish(module, ctx, root / module.NAME))
        combined = ["# mi_bridge analyses", ""]
        combined += [f"- **{r.name}**: {r.verdict}" for r in results]
        for module in skipped:
            line = not_applicable(module, config.protocol)
            report.console.print(line)
            combined.append(f"- {line}")
        combined.append("")
        for r in results:
            combined.append(report.result_markdown(r, figure=f"{r.name}/figure.png", heading="##"))
        combined.insert(2, f"**{report.site_summary(ctx.site())}** {ctx.site()['explanation']}\n")

        write_text_atomic(root / "report.md", "\n".join(combined))
        report.console.print(f"combined report: {root / 'report.md'}")
        return 0

    return cli.one_line_errors(body, "finished analyses are kept, cached activations too")


if __name__ == "__main__":
    # The scripts import this module as mi_bridge.analyses: run that copy, not a second one as __main__.
    from mi_bridge.analyses import main as run_named

    sys.exit(run_named())
