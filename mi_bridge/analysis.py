"""The shared runner of the hypothesis scripts in ``analyses/``.

A script defines ``NAME``, ``HYPOTHESIS``, ``analyze(ctx) -> AnalysisResult`` and ``plot(result, path)``
(and optionally ``add_arguments(parser)``); everything else (flags, models, seeds, cached activations,
report, run folder) lives here, so every script reuses one copy of it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge import cli, report
from mi_bridge.config import ExperimentConfig, UserError
from mi_bridge.evaluate import BASELINE, Condition, ItemScores, evaluate_conditions
from mi_bridge.experiment import summarize_condition
from mi_bridge.models import ModelPair
from mi_bridge.prepare import ActivationStore, SeedContext, seed_contexts
from mi_bridge.stats import fmt_delta

VERDICTS = ("supported", "not supported", "inconclusive")


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
            summaries = {c.name: summarize_condition(self.config, scores, c, follow) for c in SITE_CONDITIONS}
            self._sites[layer] = site_section(summaries, layer)
        return self._sites[layer]


@dataclass
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass
class AnalysisResult:
    name: str
    hypothesis: str
    verdict: str
    """One of ``supported``, ``not supported``, ``inconclusive``."""
    explanation: str
    """The numbers and CIs behind the verdict, in one paragraph."""
    tables: list[Table]
    data: dict
    """Everything the figure and results.json need (plain JSON types)."""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {self.verdict!r}")

    def to_dict(self) -> dict:
        return asdict(self)


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
    return [summarize_condition(ctx.config, seed_scores, c) for c in conditions]


def condition_table(title: str, summaries: Sequence[dict]) -> Table:
    rows = [
        (
            s["name"],
            f"{s['accuracy']:.3f}",
            fmt_delta(s),
            f"{s['gold_logprob']:.2f}",
            fmt_delta(s, "logprob"),
            str(s["n"]),
        )
        for s in summaries
    ]
    return Table(title, ("condition", "acc", "Δacc [95% CI]", "log p(C)", "Δlog p [95% CI]", "n"), rows)


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

    if config.protocol != "split":
        # The scripts measure the split protocol's single-site injections and k-way scores; the seed
        # protocol injects at every position and scores generations, which none of them reads yet.
        raise UserError(
            f"the analyses run under --protocol split only; --protocol {config.protocol} is not supported "
            "by any analysis yet (its own run, python -m mi_bridge.run --protocol seed, has the audit)"
        )
    pair = load_pair(config)
    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    seeds = seed_contexts(config, pair, store or default_store(not getattr(options, "no_cache", False)))
    return AnalysisContext(config, pair, sender_layer, receiver_layer, seeds, options)


def default_folder(name: str, ctx: AnalysisContext) -> Path:
    config = ctx.config
    tag = f"{config.pair}-L{ctx.sender_layer}-L{ctx.receiver_layer}-{config.position}-{config.target}"
    return Path("runs") / "analyses" / f"{name}-{tag}"


def analyze_and_publish(module: ModuleType, ctx: AnalysisContext, folder: Path) -> AnalysisResult:
    cli.check_writable(folder)
    site = ctx.site()
    report.render_site(site)  # before any effect: what this site can show at all
    result = qualify_by_site(module, module.analyze(ctx), site)
    report.render_analysis(result)

    config = replace(ctx.config, out=str(folder))  # config.json repeats exactly this script run
    payload = {
        "analysis": result.to_dict(),
        "config": config.to_dict(),
        "layers": {"sender": ctx.sender_layer, "receiver": ctx.receiver_layer},
        "site": site,
        "options": {k: v for k, v in vars(ctx.options).items() if _is_json(v)},
        "versions": cli.versions(),
    }

    def write_rest(staging: Path) -> None:
        module.plot(result, staging / "figure.png")
        (staging / "report.md").write_text(report.analysis_markdown(result, figure="figure.png", site=site))

    cli.publish_run(folder, config, payload, write_rest)
    report.console.print(f"{module.NAME}: {folder}")
    return result


def qualify_by_site(module: ModuleType, result: AnalysisResult, site: dict) -> AnalysisResult:
    """A script that declares ``SITE_DEPENDENT`` judges a cause (norm, direction, alignment) that only a
    pre-lookup site can isolate: elsewhere no sender vector can help at all, so its verdict is withheld."""
    if not getattr(module, "SITE_DEPENDENT", False) or site["class"] == "pre-lookup":
        return result
    if result.verdict == "inconclusive":
        return result
    note = (
        f" The site is {site['class']} (context-free ceiling {site['context_free']['mean']:+.3f}, follow rate "
        f"{site['follow_rate']['mean']:.3f}): no vector from the sender can help here, so this analysis cannot "
        f"separate its cause from that; it would otherwise read '{result.verdict}'. Rerun at a pre-lookup layer."
    )
    return AnalysisResult(
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
        if config.out:
            cli.check_writable(Path(config.out))
        ctx = prepare_context(config, options)
        folder = Path(config.out) if config.out else default_folder(module.NAME, ctx)
        analyze_and_publish(module, ctx, folder)
        return 0

    return cli.one_line_errors(body, "nothing was written to the run folder (cached activations are kept)")
