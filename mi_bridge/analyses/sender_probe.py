"""sender_probe: "No sender layer carries B linearly at the prompt's last token."

    python -m mi_bridge.analyses sender_probe --pair smollm2-gemma3

The run's sender stage reads one layer. This reads every one: at each sender layer, the same ridge probe
as the run's (``protocols.split.experiment.sender_probe``: one-hot person identities, fitted on the
bridge's fit items) picks B among the k in-context B's on the held-out items. Chance is 1/k; the
sender's own hop-1 accuracy (its next-token choice among the k) is the reference a probe could reach.
"""

import sys

import numpy as np
from scipy import stats

from mi_bridge.analyses.common import run_script
from mi_bridge.protocols.split.analysis import AnalysisContext
from mi_bridge.protocols.split.experiment import sender_probe
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import FAMILY_ALPHA, fmt_estimate, holm, rate_with_ci

NAME = "sender_probe"
HYPOTHESIS = "No sender layer carries B linearly at the prompt's last token."
NOT_FOR_SEED_PROTOCOL = (
    "the seed protocol has no bridge entity to probe for: both models read the same prompt"
)
"""Why it does not run under ``--protocol seed`` (the runner says so in one line)."""


def analyze(ctx: AnalysisContext) -> Result:
    layers = list(range(ctx.pair.sender.cfg.n_layers))
    chance = 1 / ctx.config.k
    per_layer = {layer: [] for layer in layers}
    for seed in ctx.seeds:
        seed.sender_states(layers)  # one pass for every layer; the probes read it from the cache
        for layer in layers:
            per_layer[layer].append(sender_probe(seed, layer).numpy())
    # pooled over every held-out item of every seed, exact binomial interval (as the run's sender stage)
    rates = {layer: rate_with_ci(np.concatenate(values)) for layer, values in per_layer.items()}
    # above chance: a one-sided exact binomial test per layer, Holm-corrected over the layers
    p_values = [
        stats.binomtest(round(r["mean"] * r["n"]), r["n"], chance, alternative="greater").pvalue
        for r in rates.values()
    ]
    holm_p = dict(zip(rates, holm(p_values), strict=True))
    carrying = [layer for layer in rates if holm_p[layer] < FAMILY_ALPHA]
    best = max(rates, key=lambda layer: rates[layer]["mean"])
    n = rates[best]["n"]
    verdict = "not supported" if carrying else "supported"
    explanation = (
        f"The probe reads B above chance ({chance:.3f}; one-sided exact binomial test, Holm over the layers, "
        f"family-wise α = {FAMILY_ALPHA}) at "
        f"{len(carrying)} of {len(layers)} sender layers"
        + (f" ({', '.join(f'L{layer}' for layer in carrying)})" if carrying else "")
        + f"; best L{best}: {fmt_estimate(rates[best]['mean'], rates[best]['ci'], signed=False)} "
        f"(n={n} held-out items pooled over {len(ctx.seeds)} seed(s)). The run's sender layer L{ctx.sender_layer}: "
        f"{fmt_estimate(rates[ctx.sender_layer]['mean'], rates[ctx.sender_layer]['ci'], signed=False)}."
    )
    rows = [
        (
            f"L{layer}",
            fmt_estimate(r["mean"], r["ci"], signed=False),
            f"{holm_p[layer]:.2g}",
            "yes" if layer in carrying else "",
        )
        for layer, r in rates.items()
    ]
    table = Table(
        f"Linear probe for B per sender layer (k-way, chance {chance:.3f}; exact 95% CI)",
        ("sender layer", "probe accuracy", "Holm p (vs chance)", "above chance"),
        rows,
    )
    data = {
        "layers": layers,
        "accuracy": [rates[layer]["mean"] for layer in layers],
        "ci": [rates[layer]["ci"] for layer in layers],
        "n": n,
        "chance": chance,
        "holm_p": [holm_p[layer] for layer in layers],
        "carrying": carrying,
        "run_sender_layer": ctx.sender_layer,
    }
    return Result(NAME, HYPOTHESIS, verdict, explanation, [table], data)


def plot(result: Result, path) -> None:
    data = result.data
    with saved_figure(path, 1, 1, figsize=(7, 3.5)) as (fig, ax):
        accuracy, ci = np.array(data["accuracy"]), np.array(data["ci"])
        ax.fill_between(data["layers"], ci[:, 0], ci[:, 1], alpha=0.25, label="exact 95% CI")
        ax.plot(data["layers"], accuracy, marker="o", label="probe accuracy (held-out)")
        ax.axhline(data["chance"], color="grey", linestyle="--", label=f"chance ({data['chance']:.2f})")
        ax.axvline(data["run_sender_layer"], color="black", linewidth=0.8, label="the run's sender layer")
        ax.set_xticks(data["layers"][:: max(1, len(data["layers"]) // 15)])
        ax.set_xlabel("sender layer (resid_post, last prompt token)")
        ax.set_ylabel("k-way accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title(f"Is B linearly decodable from the sender? (n={data['n']})", fontsize=9)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
