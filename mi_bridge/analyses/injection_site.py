"""injection_site: "The AC recipe (replace the receiver's last-token state) behaves differently from slot injection."

    python -m mi_bridge.analyses injection_site --pair toy

Activation communication (Ramesh & Li, 2025) replaces the receiver's last-token state at a mid-to-late
layer. This compares that site ('final') with the bridge entity's slot for every mode, with a bridge
fitted to each site's own target and self-patch at both sites; differences are paired per item.
"""

import sys

from mi_bridge.analyses.common import run_script
from mi_bridge.core.evaluate import BASELINE, Condition, standard_conditions
from mi_bridge.protocols.split.analysis import (
    AnalysisContext,
    evaluate_on_test,
    summarize_all,
    translated_vectors,
)
from mi_bridge.protocols.split.experiment import summarize_condition
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import error_bars, excludes_zero, fmt_delta

NAME = "injection_site"
HYPOTHESIS = (
    "The AC recipe (Ramesh & Li, 2025: replace the receiver's last-token state at a mid-to-late layer) "
    "behaves differently from slot injection."
)
NOT_FOR_SEED_PROTOCOL = (
    "the seed protocol has one site by definition: every prompt position of the receiver layer"
)
"""Why it does not run under ``--protocol seed`` (the runner says so in one line)."""
SITE_DEPENDENT = True
"""Its cause can only be isolated at a pre-lookup site (the runner withholds the verdict elsewhere)."""
SITES = ("slot", "final")


def analyze(ctx: AnalysisContext) -> Result:
    layer = ctx.receiver_layer
    conditions = [
        c
        for c in standard_conditions(ctx.config.options.alphas, ("translated", "self-patch"))
        if c.is_injection
    ]
    seed_scores = []
    for seed in ctx.seeds:
        merged = {}
        for site in SITES:
            vectors = {
                "translated": translated_vectors(seed, ctx.sender_layer, layer, site=site),
                "self-patch": seed.receiver_states([layer], "oracle", site)[layer][seed.test_idx],
            }
            scores = evaluate_on_test(ctx, seed, vectors, conditions, site=site)
            merged[BASELINE.name] = scores[BASELINE.name]  # the same clean run at either site
            merged |= {f"{site}: {c.name}": scores[c.name] for c in conditions}
        seed_scores.append(merged)
    rows, differences, per_site = [], [], {}
    for c in conditions:
        at = {
            site: Condition(f"{site}: {c.name}", vector=c.vector, mode=c.mode, alpha=c.alpha)
            for site in SITES
        }
        summary = {site: summarize_all(ctx, seed_scores, [at[site]])[0] for site in SITES}
        difference = summarize_condition(
            ctx.config.n_bootstrap, seed_scores, at["final"], baseline=at["slot"].name
        )
        differences.append(difference | {"condition": c.name})
        per_site[c.name] = summary
        rows.append((c.name, fmt_delta(summary["slot"]), fmt_delta(summary["final"]), fmt_delta(difference)))
    # The hypothesis is about the bridge's vectors; self-patch at both sites is the reference.
    translated = [d for d in differences if d["condition"].startswith("translated")]
    differing = [d for d in translated if excludes_zero(d["delta_accuracy_ci"])]
    largest = max(translated, key=lambda d: abs(d["delta_accuracy"]))
    self_patch = {site: per_site["self-patch replace"][site] for site in SITES}
    numbers = (
        f"{len(differing)} of {len(translated)} translated-vector conditions change accuracy between the sites with a "
        f"CI excluding 0; the largest difference (final - slot) is '{largest['condition']}': {fmt_delta(largest)} "
        f"(n={largest['n']} paired items). AC's own recipe, 'translated replace' at the final position: "
        f"{fmt_delta(per_site['translated replace']['final'])} vs baseline. Self-patch replace: slot "
        f"{fmt_delta(self_patch['slot'])}, final {fmt_delta(self_patch['final'])}."
    )
    if differing:
        verdict, tail = "supported", " Where the vector goes matters."
    else:
        verdict, tail = (
            "not supported",
            " No mode of the translated vector behaves differently at the two sites.",
        )
    table = Table(
        "Δacc vs baseline at each site, and final - slot (paired, 95% CI)",
        ("condition", "slot", "final", "final - slot"),
        rows,
    )
    data = {
        "sites": {name: {site: s for site, s in v.items()} for name, v in per_site.items()},
        "final_minus_slot": differences,
    }
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, [table], data)


def plot(result: Result, path) -> None:
    import numpy as np

    sites = result.data["sites"]
    names = list(sites)
    with saved_figure(path, figsize=(10, 4)) as (fig, ax):
        for offset, site, color in ((-0.2, "slot", "tab:blue"), (0.2, "final", "tab:orange")):
            means = [sites[n][site]["delta_accuracy"] for n in names]
            errors = error_bars(means, [sites[n][site]["delta_accuracy_ci"] for n in names])
            ax.bar(
                np.arange(len(names)) + offset, means, 0.4, yerr=errors, color=color, label=site, capsize=2
            )
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("Δ accuracy vs baseline (95% CI)")
        ax.legend(title="site", fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
