"""learning_curve: "With enough fit items, a bridge trained through the receiver closes most of the gap."

    python -m mi_bridge.analyses learning_curve --pair toy --receiver-layer 0

The positive control, where it can win. At a pre-lookup site (the configured receiver layer if it is
one, else the first pre-lookup layer found), the alignment fit and the usability-trained bridge
(mi_bridge.bridges.usability) are fitted on growing sets of bridge-fit items (``--n-fit``, drawn apart from the
held-out items, so every point is evaluated on the same items) and injected in ``--train-mode``. The
target: the usability-trained bridge closes at least 80% of the gap between the baseline and the
context-free ceiling (the receiver's own state for B without this item's answer).
"""

import math
import sys
from dataclasses import replace

import numpy as np

from mi_bridge.analyses.common import run_script
from mi_bridge.bridges.usability import add_training_arguments
from mi_bridge.core.evaluate import Condition
from mi_bridge.protocols.split.analysis import AnalysisContext, evaluate_on_test, summarize_all
from mi_bridge.protocols.split.experiment import site_vectors
from mi_bridge.protocols.split.prepare import SeedContext
from mi_bridge.protocols.split.usability import usability_bridge
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import error_bars, fmt_delta, helps

NAME = "learning_curve"
HYPOTHESIS = (
    "With enough fit items, a bridge trained through the receiver closes at least 80% of the gap between "
    "the baseline and the context-free ceiling at a pre-lookup site."
)
NOT_FOR_SEED_PROTOCOL = "the positive control needs a pre-lookup site, and the seed protocol has no site classes (both models read the same prompt, and a perfect fit of the receiver's own states is no injection)"
"""Why it does not run under ``--protocol seed`` (the runner says so in one line)."""
TARGET_SHARE = 0.8
KINDS = ("alignment", "usability", "context-free self-patch")


def add_arguments(parser) -> None:
    add_training_arguments(parser)
    parser.add_argument(
        "--curve-sizes",
        type=lambda text: tuple(int(x) for x in text.split(",")),
        default=(250, 500, 1000, 2000, 4000, 8000, 16000),
        help="bridge-fit item counts of the curve (default 250,500,...,16000)",
    )
    parser.add_argument(
        "--curve-epochs",
        type=float,
        default=2.0,
        help="passes over the fit items when training the usability bridge (at least --train-steps; default 2)",
    )


def pre_lookup_layer(ctx: AnalysisContext) -> int | None:
    """The configured receiver layer if it is pre-lookup, else the first pre-lookup layer, else None."""
    order = [ctx.receiver_layer, *range(ctx.pair.receiver.cfg.n_layers)]
    return next((layer for layer in dict.fromkeys(order) if ctx.site(layer)["class"] == "pre-lookup"), None)


def analyze(ctx: AnalysisContext) -> Result:
    options = ctx.options
    mode, sizes, epochs, min_steps = (
        options.train_mode,
        options.curve_sizes,
        options.curve_epochs,
        options.train_steps,
    )
    layer = pre_lookup_layer(ctx)
    if layer is None:
        explanation = (
            "No receiver layer is pre-lookup at this position, so no sender-derived vector can help anywhere."
        )
        return Result(NAME, HYPOTHESIS, "inconclusive", explanation, [], {"layer": None, "points": []})
    conditions = [Condition(f"{kind} {mode}", vector=kind, mode=mode, alpha=1.0) for kind in KINDS]
    points = []
    for size in sizes:
        # at least --train-steps (usability_bridge's flag), and enough for the epochs (80%: the rest validates)
        steps = max(min_steps, math.ceil(epochs * 0.8 * size / ctx.config.batch_size))
        seed_scores = []
        for base in ctx.seeds:
            seed = SeedContext(replace(ctx.config, n_fit=size), ctx.pair, base.seed, base.store)
            alignment, usability, _ = usability_bridge(seed, ctx.sender_layer, layer, mode=mode, steps=steps)
            x = seed.sender_states([ctx.sender_layer])[ctx.sender_layer][seed.test_idx]
            vectors = {"alignment": alignment(x), "usability": usability(x)} | {
                "context-free self-patch": site_vectors(seed, layer)["context-free self-patch"]
            }
            seed_scores.append(evaluate_on_test(ctx, seed, vectors, conditions, layer=layer))
        summaries = {s["vector"]: s for s in summarize_all(ctx, seed_scores, conditions)}
        ceiling = summaries["context-free self-patch"]["delta_accuracy"]
        points.append(
            {
                "n_fit": size,
                "steps": steps,
                **summaries,
                "share": {
                    k: summaries[k]["delta_accuracy"] / ceiling if ceiling > 0 else None for k in KINDS[:2]
                },
            }
        )
    last = points[-1]
    ceiling = last["context-free self-patch"]
    reached = [
        p["n_fit"] for p in points if (p["share"]["usability"] or 0) >= TARGET_SHARE and helps(p["usability"])
    ]
    numbers = (
        f"Receiver layer {layer} ({ctx.site(layer)['class']}), mode {mode}, held-out n={ceiling['n']} per point. "
        f"Context-free ceiling {fmt_delta(ceiling)}. At {last['n_fit']} fit items: usability bridge "
        f"{fmt_delta(last['usability'])} ({share_text(last['share']['usability'])} of the gap), alignment fit "
        f"{fmt_delta(last['alignment'])} ({share_text(last['share']['alignment'])}). "
        + " ".join(
            f"n_fit={p['n_fit']}: usability {share_text(p['share']['usability'])}, alignment "
            f"{share_text(p['share']['alignment'])}."
            for p in points
        )
    )
    if not helps(ceiling):
        verdict, tail = "inconclusive", " The context-free ceiling is not above the baseline here."
    elif reached:
        verdict, tail = (
            "supported",
            f" The usability bridge reaches {TARGET_SHARE:.0%} of the gap from {reached[0]} fit items on.",
        )
    else:
        verdict, tail = (
            "not supported",
            f" The usability bridge stays below {TARGET_SHARE:.0%} of the gap at every size tried.",
        )
    table = Table(
        f"Δacc vs baseline by bridge-fit items (receiver layer {layer}, {mode}; 95% CI)",
        ("fit items", "alignment fit", "usability bridge", "context-free ceiling", "usability share of gap"),
        [
            (
                str(p["n_fit"]),
                fmt_delta(p["alignment"]),
                fmt_delta(p["usability"]),
                fmt_delta(p["context-free self-patch"]),
                share_text(p["share"]["usability"]),
            )
            for p in points
        ],
    )
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, [table], {"layer": layer, "points": points})


def share_text(share: float | None) -> str:
    return "undefined" if share is None else f"{share:.0%}"


def plot(result: Result, path) -> None:
    points = result.data["points"]
    with saved_figure(path, figsize=(7, 4)) as (fig, ax):
        if not points:
            ax.text(0.5, 0.5, "no pre-lookup layer: nothing to fit", ha="center", va="center")
            ax.axis("off")
            return
        sizes = np.array([p["n_fit"] for p in points])
        for kind, color in (("alignment", "tab:blue"), ("usability", "tab:orange")):
            values = [p[kind]["delta_accuracy"] for p in points]
            ax.errorbar(
                sizes,
                values,
                yerr=error_bars(values, [p[kind]["delta_accuracy_ci"] for p in points]),
                fmt="o-",
                color=color,
                label=f"{kind} {'fit' if kind == 'alignment' else 'bridge'}",
                capsize=2,
            )
        ceiling = np.array([p["context-free self-patch"]["delta_accuracy"] for p in points])
        ax.plot(sizes, ceiling, "--", color="tab:red", label="context-free ceiling")
        ax.plot(
            sizes, TARGET_SHARE * ceiling, ":", color="tab:red", label=f"{TARGET_SHARE:.0%} of the ceiling"
        )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("bridge-fit items (log scale)")
        ax.set_ylabel("Δ accuracy vs baseline (95% CI)")
        ax.set_title(f"receiver layer {result.data['layer']}", fontsize=9)
        ax.legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
