"""usability_bridge: "A bridge trained for usability communicates where the alignment fit does not."

    python -m mi_bridge.analyses usability_bridge --pair toy

Beyond the paper: the same linear map, started from the alignment fit, is trained through the frozen
receiver (gradient only into the map) so that injecting its output reproduces the receiver's oracle-run
answer distribution (KL at the answer position). It is evaluated on held-out items with the full
condition set, next to the alignment fit, and its alignment cosine is reported too. This is the
positive control for the paper's conclusion that offline alignment is not sufficient.
"""

import sys

import numpy as np

from mi_bridge.analyses.common import run_script
from mi_bridge.bridges.metrics import fit_quality
from mi_bridge.bridges.usability import add_training_arguments
from mi_bridge.core.evaluate import standard_conditions
from mi_bridge.protocols.split import diagnosis
from mi_bridge.protocols.split.analysis import AnalysisContext, evaluate_on_test, summarize_all
from mi_bridge.protocols.split.experiment import site_vectors, summarize_condition
from mi_bridge.protocols.split.usability import usability_bridge
from mi_bridge.report.render import condition_table, saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import error_bars, fmt_delta, helps

NAME = "usability_bridge"
HYPOTHESIS = "A bridge trained for usability communicates where the alignment fit does not."
NOT_FOR_SEED_PROTOCOL = "not built for the seed protocol: it trains a bridge through the frozen receiver on the split protocol's k-way answer distribution; under the seed protocol it would train on the teacher-forced log p(answer) of mi_bridge.protocols.seed.analysis"
"""Why it does not run under ``--protocol seed`` (the runner says so in one line)."""
KINDS = ("alignment", "usability", "context-free self-patch")
"""The context-free self-patch is the ceiling: the receiver's own state for B without this item's answer."""
SITE_DEPENDENT = True
"""Its cause can only be isolated at a pre-lookup site (the runner withholds the verdict elsewhere)."""


add_arguments = add_training_arguments


def analyze(ctx: AnalysisContext) -> Result:
    options = ctx.options
    steps, lr, mode = options.train_steps, options.train_lr, options.train_mode
    conditions = [c for c in standard_conditions(ctx.config.options.alphas, KINDS) if c.is_injection]
    seed_scores, curves, cosines = [], [], {"alignment": [], "usability": []}
    for seed in ctx.seeds:
        alignment, usability, history = usability_bridge(
            seed, ctx.sender_layer, ctx.receiver_layer, mode=mode, steps=steps, lr=lr
        )
        x = seed.sender_states([ctx.sender_layer])[ctx.sender_layer]
        curves.append(history)
        target = seed.receiver_states([ctx.receiver_layer])[ctx.receiver_layer][seed.test_idx]
        vectors = {
            "alignment": alignment(x[seed.test_idx]),
            "usability": usability(x[seed.test_idx]),
            "context-free self-patch": site_vectors(seed, ctx.receiver_layer)["context-free self-patch"],
        }
        for name in cosines:
            cosines[name].append(fit_quality(vectors[name], target, alignment.y_norm)["normalized_cosine"])
        seed_scores.append(evaluate_on_test(ctx, seed, vectors, conditions))
    summaries = {s["name"]: s for s in summarize_all(ctx, seed_scores, conditions)}
    best = {kind: diagnosis.best(list(summaries.values()), kind) for kind in KINDS}
    useful = {kind: helps(best[kind]) for kind in KINDS}
    cos = {name: float(np.mean(values)) for name, values in cosines.items()}
    numbers = (
        f"Best usability-bridge condition '{best['usability']['name']}': Δacc {fmt_delta(best['usability'])}; best "
        f"alignment-fit condition '{best['alignment']['name']}': {fmt_delta(best['alignment'])}; context-free ceiling "
        f"{fmt_delta(best['context-free self-patch'])} (n={best['usability']['n']}); the usability bridge closes "
        f"{gap_closed(best['usability'], best['context-free self-patch'])} of the gap between the baseline and that "
        "ceiling. Held-out normalized cosine to the receiver's "
        f"own state: usability bridge {cos['usability']:.3f}, alignment fit {cos['alignment']:.3f}. Validation KL "
        f"(fit items held out from training) went from {np.mean([c['validation'][0] for c in curves]):.3f} to "
        f"{np.mean([min(c['validation']) for c in curves]):.3f} at the selected step; training KL ended at "
        f"{np.mean([np.mean(c['train'][-20:]) for c in curves]):.3f}."
    )
    # Usability vs alignment head to head: the best condition of each, paired on the same items.
    head_to_head = summarize_condition(
        ctx.config.n_bootstrap,
        seed_scores,
        next(c for c in conditions if c.name == best["usability"]["name"]),
        baseline=best["alignment"]["name"],
    )
    numbers += f" Best usability minus best alignment condition: Δacc {fmt_delta(head_to_head)}."
    if useful["usability"] and not useful["alignment"]:
        verdict, tail = (
            "supported",
            (
                " The same linear map family communicates once trained for use: offline "
                "alignment, not linearity, is what falls short."
            ),
        )
    elif useful["usability"] and helps(head_to_head):
        verdict, tail = (
            "supported",
            " Both help, and training for use helps clearly more than the alignment fit.",
        )
    elif useful["usability"]:
        verdict, tail = (
            "inconclusive",
            " The alignment fit already helps here about as much as the trained map.",
        )
    else:
        verdict, tail = (
            "not supported",
            " Even trained for use, the linear map does not raise accuracy at this site.",
        )
    tables = [
        condition_table(
            "Alignment fit vs usability-trained bridge (Δ vs baseline)", list(summaries.values())
        ),
        Table(
            "Alignment of each bridge (held-out)",
            ("bridge", "normalized cosine"),
            [(k, f"{v:.3f}") for k, v in cos.items()],
        ),
    ]
    data = {
        "conditions": list(summaries.values()),
        "normalized_cosine": cos,
        "loss_curves": curves,
        "usability_minus_alignment": head_to_head,
        "train": {"steps": steps, "lr": lr, "mode": mode},
    }
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, tables, data)


def gap_closed(summary: dict, ceiling: dict) -> str:
    """Share of the baseline-to-ceiling gap a condition closes (undefined when the ceiling is not above 0)."""
    if ceiling["delta_accuracy"] <= 0:
        return "an undefined share (the ceiling is not above the baseline)"
    return f"{summary['delta_accuracy'] / ceiling['delta_accuracy']:.0%}"


def plot(result: Result, path) -> None:
    with saved_figure(path, 1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]}) as (fig, axes):
        for i, curve in enumerate(result.data["loss_curves"]):
            (line,) = axes[0].plot(curve["train"], linewidth=0.6, alpha=0.6, label=f"seed {i} train")
            axes[0].plot(
                curve["validation_step"],
                curve["validation"],
                marker="o",
                markersize=3,
                color=line.get_color(),
                label=f"seed {i} validation",
            )
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("KL(oracle || injected)")
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=7)
        conditions = [c for c in result.data["conditions"] if c["vector"] in ("alignment", "usability")]
        names = sorted(
            {c["name"].split(" ", 1)[1] for c in conditions},
            key=[c["name"].split(" ", 1)[1] for c in conditions].index,
        )
        for offset, kind, color in ((-0.2, "alignment", "tab:gray"), (0.2, "usability", "tab:green")):
            rows = [next(c for c in conditions if c["name"] == f"{kind} {n}") for n in names]
            means = [c["delta_accuracy"] for c in rows]
            errors = error_bars(means, [c["delta_accuracy_ci"] for c in rows])
            axes[1].bar(
                np.arange(len(names)) + offset, means, 0.4, yerr=errors, color=color, label=kind, capsize=2
            )
        axes[1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        axes[1].axhline(0, color="black", linewidth=0.8)
        axes[1].set_ylabel("Δ accuracy vs baseline (95% CI)")
        axes[1].legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
