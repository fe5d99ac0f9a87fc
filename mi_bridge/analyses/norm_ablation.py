"""norm_ablation: "Norm, not direction, is why replacement destroys."

    python -m mi_bridge.analyses norm_ablation --pair toy

Scale sweep of the translated vector (x0.125 ... x8, add and replace), the translated direction with
the self-patch norm and the self-patch direction with the translated norm, and norm-matched random
directions at the same scales and with the self-patch norm.

log p rises under almost any perturbation of an injection's size, so the verdict reads the rescue
(the translated direction with the receiver's own norm) against matched controls, never against 0:
the same direction at its own norm (does the norm change help?) and a random direction with the same
norm (does the translated direction add damage at the right norm?). Only the damage itself is read
against no injection: that artefact raises log p, so it can hide damage but not fake it.

Under ``--protocol seed`` the same vectors replace (or are added to) the receiver's state at every
prompt position, the self-patch state is the receiver's own, and Δ log p(answer) is the score.
"""

import sys

import numpy as np
import torch

from mi_bridge.analyses.common import run_script
from mi_bridge.core import progress
from mi_bridge.core.controls import random_like
from mi_bridge.core.evaluate import Condition
from mi_bridge.core.inject import rescale_to
from mi_bridge.protocols.seed.analysis import SeedProtocolContext, delta_summary
from mi_bridge.protocols.split.analysis import (
    AnalysisContext,
    evaluate_on_test,
    summarize_all,
    translated_vectors,
)
from mi_bridge.protocols.split.experiment import summarize_condition
from mi_bridge.report.render import condition_table, saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.seeds import SeedOffset
from mi_bridge.stats import fmt_ci, fmt_delta, helps, hurts

NAME = "norm_ablation"
HYPOTHESIS = "Norm, not direction, is why replacement destroys."
DEFAULT_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LINES = ("translated", "self-patch", "random")
SITE_DEPENDENT = True
"""Its cause can only be isolated at a pre-lookup site (the runner withholds the verdict elsewhere)."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--scales",
        type=lambda t: tuple(float(x) for x in t.split(",")),
        default=DEFAULT_SCALES,
        help="scale factors of the sweep, comma-separated (default 0.125,...,8)",
    )


def ablation_vectors(translated, self_patch, scales, seed: int) -> dict[str, torch.Tensor]:
    """Scaled vectors for the sweep, and the two norm/direction swaps."""
    generator = torch.Generator().manual_seed(SeedOffset.NORM_ABLATION + seed)
    base = {"translated": translated, "self-patch": self_patch, "random": random_like(translated, generator)}
    vectors = {f"{kind} x{scale:g}": scale * vector for kind, vector in base.items() for scale in scales}
    vectors["translated dir, self-patch norm"] = rescale_to(translated, self_patch)
    vectors["self-patch dir, translated norm"] = rescale_to(self_patch, translated)
    vectors["random dir, self-patch norm"] = rescale_to(base["random"], self_patch)  # the rescue's control
    return vectors


def conditions_for(scales) -> list[Condition]:
    """``add`` of a vector scaled by s is h + s*v; ``replace`` puts s*v in place of h."""
    names = [f"{kind} x{scale:g}" for kind in LINES for scale in scales]
    names += [
        "translated dir, self-patch norm",
        "self-patch dir, translated norm",
        "random dir, self-patch norm",
    ]
    return [
        Condition(f"{name} {mode}", vector=name, mode=mode, alpha=1.0)
        for name in names
        for mode in ("add", "replace")
    ]


MATCHED = {
    "vs its own norm": ("translated dir, self-patch norm replace", "translated x1 replace"),
    "vs random direction": ("translated dir, self-patch norm replace", "random dir, self-patch norm replace"),
}
"""The rescue's paired comparisons (condition, matched control): what the verdict reads."""


def analyze(ctx: AnalysisContext) -> Result:
    scales = tuple(ctx.options.scales)
    conditions = conditions_for(scales)
    seed_scores = []
    for seed in ctx.seeds:
        translated = translated_vectors(seed, ctx.sender_layer, ctx.receiver_layer)
        self_patch = seed.receiver_states([ctx.receiver_layer])[ctx.receiver_layer][seed.test_idx]
        seed_scores.append(
            evaluate_on_test(
                ctx, seed, ablation_vectors(translated, self_patch, scales, seed.seed), conditions
            )
        )
    summaries = {s["name"]: s for s in summarize_all(ctx, seed_scores, conditions)}
    by_name = {c.name: c for c in conditions}
    matched = {
        key: summarize_condition(ctx.config.n_bootstrap, seed_scores, by_name[name], baseline=control)
        for key, (name, control) in MATCHED.items()
    }
    plain = summaries["translated x1 replace"]
    table = condition_table("Norm ablations (Δ vs baseline)", [summaries[c.name] for c in conditions])
    return judged(summaries, matched, scales, f", Δacc {fmt_delta(plain)}", table)


def analyze_seed(ctx: SeedProtocolContext) -> Result:
    """The same sweep under ``--protocol seed``: every vector replaces (or is added to) the receiver's
    state at every prompt position; scored by Δ log p(answer) (``mi_bridge.protocols.seed.analysis``)."""
    scales = tuple(ctx.options.scales)
    own = ctx.run.receiver_states
    lengths = [len(h) for h in own]
    # One (positions, d) matrix of every item's positions, so the vectors are built as in the split protocol.
    flat = ablation_vectors(torch.cat(ctx.translated()), torch.cat(own), scales, ctx.bridge.seed)
    vectors = {name: list(v.split(lengths)) for name, v in flat.items()}
    baseline = ctx.logprobs()
    conditions = conditions_for(scales)
    summaries, values = {}, {}
    for i, c in enumerate(progress.track(conditions, "norm ablation: conditions")):
        values[c.name] = ctx.logprobs(vectors[c.vector], c.mode)
        summaries[c.name] = delta_summary(c.name, values[c.name], baseline, ctx.config.n_bootstrap, seed=i)
    matched = {
        key: delta_summary(
            name, values[name], values[control], ctx.config.n_bootstrap, seed=len(conditions) + i
        )
        for i, (key, (name, control)) in enumerate(MATCHED.items())
    }
    title = "Norm ablations, every prompt position (Δ log p(answer) vs no injection)"
    rows = [
        (
            s["name"],
            f"{s['logprob']:.2f}",
            f"{s['delta_logprob']:+.3f} {fmt_ci(s['delta_logprob_ci'])}",
            str(s["n"]),
        )
        for s in (summaries[c.name] for c in conditions)
    ]
    table = Table(title, ("condition", "log p(answer)", "Δlog p [95% CI]", "n"), rows)
    return judged(summaries, matched, scales, "", table, score="log p(answer)")


def judged(
    summaries: dict[str, dict], matched: dict[str, dict], scales, extra: str, table, score: str = "log p(C)"
) -> Result:
    """The verdict (both protocols): the damage of the plain replacement against no injection, then the
    rescue by the receiver's norm against its matched controls (``matched``, see :data:`MATCHED`)."""
    plain = summaries["translated x1 replace"]
    norm_fixed = summaries["translated dir, self-patch norm replace"]
    direction_swapped = summaries["self-patch dir, translated norm replace"]
    own_norm, random_direction = matched["vs its own norm"], matched["vs random direction"]
    numbers = (
        f"Replacing with the translated vector: Δlog p {fmt_delta(plain, 'logprob')}{extra}. "
        f"With the self-patch norm: Δlog p {fmt_delta(norm_fixed, 'logprob')}; against the same direction at "
        f"its own norm {fmt_delta(own_norm, 'logprob')}, against a random direction with the self-patch norm "
        f"{fmt_delta(random_direction, 'logprob')}. Self-patch direction with the translated norm: Δlog p "
        f"{fmt_delta(direction_swapped, 'logprob')} (n={plain['n']})."
    )
    rescued = helps(own_norm, "logprob") and not hurts(random_direction, "logprob")
    if not hurts(plain, "logprob"):
        verdict, tail = (
            "inconclusive",
            " Replacement is not destructive here, so there is nothing for the norm to explain.",
        )
    elif rescued:
        verdict, tail = (
            "supported",
            " The receiver's own norm raises log p over the same direction at its own norm, and the "
            "translated direction does no worse than a random one of that norm: the norm set the damage.",
        )
    elif hurts(random_direction, "logprob"):
        verdict, tail = (
            "not supported",
            " At the receiver's own norm the translated direction does worse than a random direction of "
            "that norm: the direction is at fault.",
        )
    else:
        verdict, tail = (
            "not supported",
            " Giving the translated direction the receiver's own norm does not raise log p over that "
            "direction at its own norm: the norm does not explain the damage.",
        )
    lines = {
        f"{kind} {mode}": [
            [summaries[f"{kind} x{scale:g} {mode}"][key] for scale in scales]
            for key in ("delta_logprob", "delta_logprob_ci")
        ]
        for kind in LINES
        for mode in ("add", "replace")
    }
    data = {
        "scales": list(scales),
        "lines": lines,
        "conditions": list(summaries.values()),
        "matched": matched,
        "score": score,
    }
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, [table], data)


def plot(result: Result, path) -> None:
    scales = result.data["scales"]
    with saved_figure(path, 1, 2, figsize=(10, 3.8), sharey=True) as (fig, axes):
        for ax, mode in zip(axes, ("add", "replace"), strict=True):
            for kind in LINES:
                mean, cis = result.data["lines"][f"{kind} {mode}"]
                low, high = np.array(cis).T
                ax.plot(scales, mean, marker="o", label=kind)
                ax.fill_between(scales, low, high, alpha=0.2)
            ax.set_xscale("log", base=2)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel("scale of the injected vector")
            ax.set_title(f"{mode}: h + s·v" if mode == "add" else "replace: s·v", fontsize=9)
        axes[0].set_ylabel(f"Δ {result.data['score']} vs baseline (95% CI)")
        axes[0].legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
