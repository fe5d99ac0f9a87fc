"""lookup_phase: "A sender-derived vector can only help before the receiver has looked the answer up."

    python -m mi_bridge.analyses lookup_phase --pair toy

For every receiver layer, at the configured site: self-patch (the receiver's own oracle state), the
context-free ceiling (its state for B read against another item's facts: B without this item's answer),
the follow rate of the counterfactual self-patch (share of items answered with the permuted C: does
the state carry the answer?) and the best translated condition (bridge fitted per layer, every mode;
the best that survives the Holm correction over every layer's conditions, or else the best by mean).
Layers are classed pre-lookup, post-lookup or inert (docs/DESIGN.md, "Site diagnosis").
"""

import sys

import numpy as np

from mi_bridge.analyses.common import run_script
from mi_bridge.core.evaluate import standard_conditions
from mi_bridge.protocols.split import diagnosis
from mi_bridge.protocols.split.analysis import AnalysisContext, evaluate_on_test, translated_vectors
from mi_bridge.protocols.split.experiment import SITE_CONDITIONS, site_vectors, summarize_conditions
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import error_bars, fmt_ci, fmt_delta, fmt_rate, helps_in_family, survives_as_strongest

NAME = "lookup_phase"
HYPOTHESIS = "A sender-derived vector can only help before the receiver has looked the answer up."
NOT_FOR_SEED_PROTOCOL = "the site classes need prompts with the answers permuted among the facts and a context-free prompt per item, which the seed items do not have; under this protocol every analysis prints the seed site statement instead (a perfect fit of the receiver's own states is no injection)"
"""Why it does not run under ``--protocol seed`` (the runner says so in one line)."""


def analyze(ctx: AnalysisContext) -> Result:
    layers = list(range(ctx.pair.receiver.cfg.n_layers))
    translated = [
        c for c in standard_conditions(ctx.config.options.alphas, ("translated",)) if c.is_injection
    ]
    conditions = [*SITE_CONDITIONS, *translated]
    scores = {layer: [] for layer in layers}
    for seed in ctx.seeds:
        for layer in layers:
            vectors = site_vectors(seed, layer) | {
                "translated": translated_vectors(seed, ctx.sender_layer, layer)
            }
            scores[layer].append(evaluate_on_test(ctx, seed, vectors, conditions, layer=layer))
    follow = [seed.test.follow_index for seed in ctx.seeds]
    rows, tests, self_patch = [], [], {}
    for layer in layers:
        summaries = summarize_conditions(ctx.config.n_bootstrap, scores[layer], conditions, follow)
        by_name = {s["name"]: s for s in summaries}
        rows.append(
            diagnosis.site_section(by_name, layer)
            | {"best_translated": diagnosis.best(summaries, "translated")}
        )
        tests += [(layer, s) for s in diagnosis.of_vector(summaries, "translated")]
        self_patch[layer] = by_name[diagnosis.site_condition_name("self-patch")]
    # a layer helps if any of its translated conditions survives Holm over every layer's conditions;
    # such a layer shows its best surviving condition
    survivors = [test for test, ok in zip(tests, helps_in_family([s for _, s in tests]), strict=True) if ok]
    for r in rows:
        r["best_translated"] = (
            diagnosis.best([s for layer, s in survivors if layer == r["layer"]], "translated")
            or r["best_translated"]
        )
    helping = [r for r in rows if r["layer"] in {layer for layer, _ in survivors}]
    outside = [r for r in helping if r["class"] != "pre-lookup"]
    post = [r["layer"] for r in rows if r["class"] == "post-lookup"]
    pre = [r["layer"] for r in rows if r["class"] == "pre-lookup"]
    numbers = (
        f"Pre-lookup layers: {pre or 'none'}; post-lookup: {post or 'none'}; inert: "
        f"{[r['layer'] for r in rows if r['class'] == 'inert'] or 'none'}. The translated vector helps "
        f"(a condition with its CI above 0 that survives Holm over all {len(tests)} layer × condition "
        f"tests) at layers {[r['layer'] for r in helping] or 'none'}. "
        + " ".join(
            f"Layer {r['layer']}: context-free {fmt_delta_site(r['context_free'])}, follow rate "
            f"{r['follow_rate']['mean']:.3f}, best translated {fmt_delta(r['best_translated'])}."
            for r in rows
        )
    )
    if outside:
        verdict = "not supported"
        tail = f" The translated vector helps at non-pre-lookup layers {[r['layer'] for r in outside]}."
    elif not post:
        verdict = "inconclusive"
        tail = " No layer is post-lookup at this site, so the claim is not put to the test here."
    elif not any(survives_as_strongest(self_patch[layer], len(tests)) for layer in post):
        # self-patch carries the answer, so it is no ceiling for a sender here, only a yardstick of what
        # this many items can detect: if even it would not survive Holm, a missing help says nothing
        verdict = "inconclusive"
        tail = (
            f" No post-lookup layer's self-patch would survive the Holm correction over the {len(tests)} "
            "tests, so a missing help there says nothing."
        )
    else:
        verdict = "supported"
        tail = " Wherever the receiver has already looked the answer up, no translated vector helps."
    table = Table(
        f"Lookup phase per receiver layer ({ctx.config.options.position}; Δacc vs baseline, 95% CI; n={rows[0]['self_patch']['n']})",
        ("layer", "class", "self-patch", "context-free ceiling", "follow rate", "best translated"),
        [
            (
                str(r["layer"]),
                r["class"],
                fmt_delta_site(r["self_patch"]),
                fmt_delta_site(r["context_free"]),
                fmt_rate(r["follow_rate"]),
                f"{fmt_delta(r['best_translated'])} ({r['best_translated']['name']})",
            )
            for r in rows
        ],
    )
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, [table], {"layers": rows})


def fmt_delta_site(value: dict) -> str:
    return f"{value['mean']:+.3f} {fmt_ci(value['ci'])}"


def plot(result: Result, path) -> None:
    rows = result.data["layers"]
    layers = np.array([r["layer"] for r in rows])
    series = (
        ("self-patch", lambda r: r["self_patch"], "tab:green"),
        ("context-free ceiling", lambda r: r["context_free"], "tab:red"),
        ("follow rate", lambda r: r["follow_rate"], "tab:orange"),
        (
            "best translated",
            lambda r: {
                "mean": r["best_translated"]["delta_accuracy"],
                "ci": r["best_translated"]["delta_accuracy_ci"],
            },
            "tab:blue",
        ),
    )
    with saved_figure(path, figsize=(7, 4)) as (fig, ax):
        for offset, (label, get, color) in zip((-0.09, -0.03, 0.03, 0.09), series, strict=True):
            values = [get(r)["mean"] for r in rows]
            ax.errorbar(
                layers + offset,
                values,
                yerr=error_bars(values, [get(r)["ci"] for r in rows]),
                fmt="o-",
                color=color,
                label=label,
                capsize=2,
                markersize=4,
            )
        for r in rows:
            ax.annotate(
                r["class"], (r["layer"], 1.02), ha="center", fontsize=7, xycoords=("data", "axes fraction")
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(layers)
        ax.set_xlabel("receiver layer (injection)")
        ax.set_ylabel("Δ accuracy vs baseline / follow rate")
        ax.legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
