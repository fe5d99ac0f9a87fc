"""The shared runner of the hypothesis scripts in ``analyses/``.

A script defines ``NAME``, ``HYPOTHESIS``, ``analyze(ctx) -> AnalysisResult`` and ``plot(result, path)``
(and optionally ``add_arguments(parser)``); everything else (flags, models, seeds, cached activations,
report, run folder) lives here, so every script reuses one copy of it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor

from mi_bridge import report
from mi_bridge.config import ExperimentConfig
from mi_bridge.evaluate import BASELINE, Condition, ItemScores, evaluate_conditions
from mi_bridge.experiment import summarize_condition
from mi_bridge.models import ModelPair
from mi_bridge.prepare import ActivationStore, SeedContext, check_finite, seed_contexts
from mi_bridge.stats import excludes_zero

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
    bridge = seed.fit_bridge(sender_layer, receiver_layer, **bridge_options)
    vectors = bridge(seed.sender_states([sender_layer])[sender_layer][seed.test_idx])
    check_finite(vectors, what="bridge outputs")
    return vectors


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


def fmt_delta(summary: dict, metric: str = "accuracy") -> str:
    low, high = summary[f"delta_{metric}_ci"]
    return f"{summary[f'delta_{metric}']:+.3f} [{low:+.3f}, {high:+.3f}]"


def helps(summary: dict, metric: str = "accuracy") -> bool:
    return excludes_zero(summary[f"delta_{metric}_ci"]) and summary[f"delta_{metric}"] > 0


def hurts(summary: dict, metric: str = "accuracy") -> bool:
    return excludes_zero(summary[f"delta_{metric}_ci"]) and summary[f"delta_{metric}"] < 0


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


def bootstrap_statistic(samples: Sequence[np.ndarray], statistic, *, n_resamples: int, seed: int = 0):
    """Point estimate and paired percentile bootstrap 95% CI of ``statistic(*samples)`` over items."""
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    estimate = float(statistic(*samples))
    result = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return estimate, [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def per_item_cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Running scripts


def build_parser(module: ModuleType):
    from mi_bridge.run import build_parser as experiment_parser

    name = module.NAME
    parser = experiment_parser(prog=f"python analyses/{name}.py", description=module.HYPOTHESIS)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return parser


def prepare_context(
    config: ExperimentConfig, options: argparse.Namespace, store: ActivationStore | None = None
):
    from mi_bridge.models import load_pair, record_identities, resolve_layers
    from mi_bridge.prepare import default_store

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
    from mi_bridge.files import publish_folder
    from mi_bridge.run import check_writable, versions

    check_writable(folder)
    result = module.analyze(ctx)
    report.render_analysis(result)

    def write(staging: Path) -> None:
        payload = {
            "analysis": result.to_dict(),
            "config": ctx.config.to_dict(),
            "layers": {"sender": ctx.sender_layer, "receiver": ctx.receiver_layer},
            "options": {k: v for k, v in vars(ctx.options).items() if _is_json(v)},
            "versions": versions(),
        }
        (staging / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        (staging / "config.json").write_text(json.dumps(ctx.config.to_dict(), indent=2) + "\n")
        module.plot(result, staging / "figure.png")
        (staging / "report.md").write_text(report.analysis_markdown(result, figure="figure.png"))

    publish_folder(folder, write)
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
    from mi_bridge.run import check_writable, config_from_args

    def body() -> int:
        options = build_parser(module).parse_args(argv)
        config = config_from_args(options)
        if config.out:
            check_writable(Path(config.out))
        ctx = prepare_context(config, options)
        folder = Path(config.out) if config.out else default_folder(module.NAME, ctx)
        analyze_and_publish(module, ctx, folder)
        return 0

    return report.one_line_errors(body, "nothing was written to the run folder (cached activations are kept)")
