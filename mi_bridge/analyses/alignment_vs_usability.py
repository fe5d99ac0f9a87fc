"""alignment_vs_usability: "Per-item alignment does not predict per-item benefit."

    python -m mi_bridge.analyses alignment_vs_usability --pair toy

Per held-out item: the cosine (in the receiver's standardized space) between the translated vector and
the receiver's own oracle state at the site, against the change in the gold answer's log-prob that
injecting the translated vector causes. Spearman rho with a paired bootstrap CI.
"""

import sys

import numpy as np
from scipy import stats

from mi_bridge.analyses.common import per_item_cosine, run_script
from mi_bridge.core.evaluate import BASELINE, Condition
from mi_bridge.core.inject import MODES
from mi_bridge.protocols.split.analysis import AnalysisContext, evaluate_on_test
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import bootstrap_statistic

NAME = "alignment_vs_usability"
HYPOTHESIS = "Per-item alignment does not predict per-item benefit."
NOT_FOR_SEED_PROTOCOL = "not built for the seed protocol: it would pair a per-item alignment (averaged over the prompt positions) with the per-item Δ log p(answer) of mi_bridge.protocols.seed.analysis"
"""Why it does not run under ``--protocol seed`` (the runner says so in one line)."""
SITE_DEPENDENT = True
"""Its cause can only be isolated at a pre-lookup site (the runner withholds the verdict elsewhere)."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--scatter-mode",
        choices=MODES,
        default="replace",
        help="injection mode whose benefit is correlated with alignment (default replace)",
    )


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def analyze(ctx: AnalysisContext) -> Result:
    mode = ctx.options.scatter_mode
    cosines, benefits = [], []
    for seed in ctx.seeds:
        bridge = seed.fit_bridge(ctx.sender_layer, ctx.receiver_layer)
        translated = bridge(seed.sender_states([ctx.sender_layer])[ctx.sender_layer][seed.test_idx])
        target = seed.receiver_states([ctx.receiver_layer])[ctx.receiver_layer][seed.test_idx]
        cosines.append(per_item_cosine(bridge.y_norm(translated), bridge.y_norm(target)).numpy())
        condition = Condition("translated", vector="translated", mode=mode, alpha=1.0)
        scores = evaluate_on_test(ctx, seed, {"translated": translated}, [condition])
        benefits.append((scores["translated"].gold_logprob - scores[BASELINE.name].gold_logprob).numpy())
    x, y = np.concatenate(cosines), np.concatenate(benefits)
    rho, ci = bootstrap_statistic([x, y], spearman, n_resamples=ctx.config.n_bootstrap)
    numbers = f"Spearman rho between per-item normalized cosine and Δ log p(C) ({mode}) is {rho:+.3f} (95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}], n={len(x)} items)."
    if ci[0] <= 0 <= ci[1]:
        verdict, tail = "supported", " The CI includes 0: items the bridge aligns better do not benefit more."
    elif ci[0] > 0:
        verdict, tail = (
            "not supported",
            " Better-aligned items benefit more: alignment carries usable information.",
        )
    else:
        verdict, tail = (
            "not supported",
            " Better-aligned items benefit less (a negative relation, not an absent one).",
        )
    table = Table(
        "Alignment vs benefit (held-out items, all seeds)",
        ("measure", "value"),
        [
            ("per-item normalized cosine, mean", f"{x.mean():.3f}"),
            (f"Δ log p(C) ({mode}), mean", f"{y.mean():+.3f}"),
            ("Spearman rho [95% CI]", f"{rho:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"),
            ("n", str(len(x))),
        ],
    )
    data = {
        "mode": mode,
        "rho": rho,
        "rho_ci": ci,
        "n": int(len(x)),
        "cosine": x.tolist(),
        "delta_logprob": y.tolist(),
    }
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, [table], data)


def plot(result: Result, path) -> None:
    data = result.data
    with saved_figure(path, figsize=(5.5, 4)) as (fig, ax):
        ax.scatter(data["cosine"], data["delta_logprob"], s=6, alpha=0.4)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("per-item normalized cosine (translated vs own state)")
        ax.set_ylabel(f"Δ log p(C), {data['mode']}")
        ax.set_title(
            f"Spearman ρ = {data['rho']:+.3f} [{data['rho_ci'][0]:+.3f}, {data['rho_ci'][1]:+.3f}]",
            fontsize=9,
        )


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
