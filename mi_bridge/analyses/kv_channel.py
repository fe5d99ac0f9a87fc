"""kv_channel: "The sender's key–value cache, delivered to the receiver, helps it answer beyond what a
learned constant prefix gives."

    python -m mi_bridge.analyses kv_channel --pair toy
    python -m mi_bridge.analyses kv_channel --pair smollm2 --kv-layer-map shift:-4 --n-items 400 --seeds 1

The second channel (issue 34), after the published positive results that pass caches (Cache-to-Cache,
KVComm), but under this toolkit's controls: the sender's cache of its prompt P, mapped per layer
(``kv-linear``, closed form) or through a trained fuser with a gate (``kv-fuser``), is delivered to the
receiver as a prefix before its own prompt Q (``mi_bridge.protocols.split.kv_channel``). Each is compared
with the same map fed another item's, the mean or a random cache, with the untrained fuser, and with a
learned constant prefix of the same size trained the same way without any sender input: a trained
channel that reads the receiver's loss can learn the task by itself, and only a gain beyond that prefix is
the sender's. The receiver reading P itself is the ceiling; the best residual bridge at the configured site
stands beside it.

A model paired with itself under the identity layer map delivers the receiver's own cache of P: that is
the reference, not a channel, and the verdict is withheld (use ``--kv-layer-map shift:K``).
"""

import sys

import numpy as np
import pandas as pd

from mi_bridge.analyses.common import run_script
from mi_bridge.core.evaluate import Condition, standard_conditions
from mi_bridge.protocols.split.analysis import AnalysisContext, evaluate_on_test, translated_vectors
from mi_bridge.protocols.split.experiment import summarize_condition
from mi_bridge.protocols.split.items import SeedItems, layer_table
from mi_bridge.protocols.split.kv_channel import (
    CEILINGS,
    FUSER,
    KV_CONDITIONS,
    LINEAR,
    PLAIN_PROMPTS,
    PREFIX,
    READS_P,
    READS_PB,
    SENDER_READING,
    add_kv_arguments,
    kv_settings,
    run_seed_kv,
)
from mi_bridge.report.render import condition_table, saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import error_bars, fmt_delta, helps, holm, task_valid

NAME = "kv_channel"
HYPOTHESIS = (
    "The sender's key-value cache, delivered to the receiver, helps it answer beyond what a learned constant "
    "prefix gives."
)
SEED_PROTOCOL = "not built for the seed protocol: both models read the same prompt there, so the receiver's own cache already holds everything the sender's cache could deliver"
RESIDUAL_BASELINE = "baseline (residual path)"
"""The residual conditions' own baseline: the injection path's run of Q, paired with them exactly."""

add_arguments = add_kv_arguments


def analyze(ctx: AnalysisContext) -> Result:
    settings = kv_settings(ctx.options)
    n_boot = ctx.config.n_bootstrap
    residual = [c for c in standard_conditions(ctx.config.options.alphas, ("translated",)) if c.is_injection]
    seed_scores, runs, frames = [], [], []
    for seed in ctx.seeds:
        run = run_seed_kv(seed, settings, ctx.config.batch_size)
        vectors = {"translated": translated_vectors(seed, ctx.sender_layer, ctx.receiver_layer)}
        injected = evaluate_on_test(ctx, seed, vectors, residual)
        scores = run.scores | {c.name: injected[c.name] for c in residual}
        seed_scores.append(scores | {RESIDUAL_BASELINE: injected["baseline"]})
        runs.append(run)
        conditions = [_condition(name) for name in (*PLAIN_PROMPTS, *KV_CONDITIONS)] + residual
        frames.append(
            layer_table(
                [SeedItems.of(seed)],
                [scores],
                conditions,
                part="kv channel",
                layer=ctx.receiver_layer,
                sender_layer=ctx.sender_layer,
                position=ctx.config.options.position,
            )
        )
    summary = lambda name, baseline="baseline": summarize_condition(
        n_boot, seed_scores, _condition(name), baseline=baseline
    )
    kv = {name: summary(name) for name in (*PLAIN_PROMPTS, *KV_CONDITIONS) if name != "baseline"}
    best_residual = max(
        (summary(c.name, RESIDUAL_BASELINE) for c in residual), key=lambda s: s["delta_accuracy"]
    )
    versus_prefix = {name: summary(name, PREFIX) for name in SENDER_READING}
    versus_shuffled = {name: summary(name, f"{name} shuffled") for name in SENDER_READING}
    p_values = [versus_prefix[n]["delta_accuracy_p"] for n in SENDER_READING]
    holm_p = dict(zip(SENDER_READING, holm(p_values), strict=True))
    first = runs[0].fit
    self_reference = ctx.pair.sender_name == ctx.pair.receiver_name and all(
        s == j for j, s in enumerate(first["sender_layers"])
    )
    verdict, explanation = judge(
        ctx, kv, versus_prefix, versus_shuffled, holm_p, best_residual, self_reference, first["layer_map"]
    )
    heldout = [r.fit["ridge_heldout"] for r in runs]
    explanation += (
        f" The {LINEAR} map's fit on held-out items (normalized cosine, mean over layers and seeds): keys "
        f"{np.mean([h['keys']['normalized_cosine'] for h in heldout]):.3f}, values "
        f"{np.mean([h['values']['normalized_cosine'] for h in heldout]):.3f}."
    )
    cpu_minutes = [r.cpu_seconds / 60 for r in runs]
    explanation += (
        f" CPU time per seed: {', '.join(f'{m:.1f}' for m in cpu_minutes)} min (wall "
        f"{', '.join(f'{r.wall_seconds / 60:.1f}' for r in runs)} min)."
    )
    mass = {name: np.mean([r.attention_mass[name] for r in runs], axis=0).tolist() for name in KV_CONDITIONS}
    rows = [kv[name] for name in KV_CONDITIONS] + [best_residual, kv["text relay"], kv["oracle"]]
    tables = [
        condition_table("KV channel (Δ vs baseline; best residual bridge beside it)", rows),
        Table(
            "Sender's cache against the adaptation control and its own shuffle (paired, same items)",
            ("condition", "vs learned prefix", f"Holm p (over {len(SENDER_READING)})", "vs own shuffled"),
            [
                (n, fmt_delta(versus_prefix[n]), f"{holm_p[n]:.2g}", fmt_delta(versus_shuffled[n]))
                for n in SENDER_READING
            ],
        ),
        Table(
            "Attention of the answer position on the delivered positions (mean over layers, heads, items)",
            ("condition", "attention mass"),
            [(name, f"{np.mean(mass[name]):.3f}") for name in KV_CONDITIONS],
        ),
        Table(
            "Training (per seed)",
            ("seed", "source", "trained numbers", "epochs run", "best epoch", "held-out loss: start → best"),
            [
                (
                    str(seed.seed),
                    name,
                    f"{log['n_trainable']:,}",
                    str(len(log["fit_loss"])),
                    str(log["best_epoch"]),
                    f"{log['heldout_loss'][0]:.3f} → {log['heldout_loss'][log['best_epoch']]:.3f}",
                )
                for seed, run in zip(ctx.seeds, runs, strict=True)
                for name, log in run.fit["training"].items()
            ],
        ),
    ]
    data = {
        "conditions": rows,
        "versus_prefix": versus_prefix,
        "versus_shuffled": versus_shuffled,
        "holm_p_versus_prefix": holm_p,
        "attention_mass": mass,
        "fits": [r.fit for r in runs],
        "cpu_minutes_per_seed": cpu_minutes,
        "settings": vars(settings),
        "self_reference": self_reference,
        "items": pd.concat(frames, ignore_index=True),
    }
    return Result(NAME, HYPOTHESIS, verdict, explanation, tables, data)


def judge(ctx, kv, versus_prefix, versus_shuffled, holm_p, best_residual, self_reference, layer_map):
    """The transfer verdict: validity first, then the ceiling, then the sender's gain beyond the prefix."""
    oracle = kv["oracle"]
    valid = task_valid(oracle["delta_accuracy"], oracle["delta_accuracy_ci"], ctx.config.min_oracle_gap)
    ceiling, prefix = max((kv[name] for name in CEILINGS), key=lambda s: s["delta_accuracy"]), kv[PREFIX]
    best = max(SENDER_READING, key=lambda n: kv[n]["delta_accuracy"])
    numbers = (
        f"Task validity: oracle {fmt_delta(oracle)} over the baseline ({'valid' if valid else 'NOT valid'}; "
        f"n={oracle['n']}). Layer map {layer_map}. The ceilings, the receiver reading P itself: "
        f"{fmt_delta(kv[READS_P])}, and P + B: {fmt_delta(kv[READS_PB])}. {LINEAR}: {fmt_delta(kv[LINEAR])}; "
        f"{FUSER}: {fmt_delta(kv[FUSER])}; learned prefix (no sender input): {fmt_delta(prefix)}; the best "
        f"residual bridge at receiver layer {ctx.receiver_layer} ('{best_residual['name']}'): "
        f"{fmt_delta(best_residual)}. Beyond the learned prefix "
        f"on the same items: {LINEAR} {fmt_delta(versus_prefix[LINEAR])} (Holm p = {holm_p[LINEAR]:.2g}), "
        f"{FUSER} {fmt_delta(versus_prefix[FUSER])} (Holm p = {holm_p[FUSER]:.2g}); beyond its own shuffled "
        f"control: {best} {fmt_delta(versus_shuffled[best])}."
    )
    if not valid:
        return "untestable here", numbers + " The task is not valid here: no channel could show a help."
    if self_reference:
        return "untestable here", numbers + (
            f" Sender and receiver are one model and the layer map delivers each layer's own cache, so "
            f"{LINEAR} is the receiver reading P by construction: the reference, not a channel. Rerun with "
            "--kv-layer-map shift:K."
        )
    if not helps(ceiling):
        return "untestable here", numbers + (
            " Even the receiver's own cache of P (or of P + B) does not help: no cache of P could, whatever "
            "the map."
        )
    gains = [
        n
        for n in SENDER_READING
        if helps(versus_prefix[n]) and holm_p[n] < 0.05 and helps(versus_shuffled[n])
    ]
    if gains:
        return "transfer helps", numbers + (
            f" The sender's cache helps beyond adaptation ({', '.join(gains)}): more than the learned prefix "
            "and more than the same map fed another item's cache."
        )
    tail = " The sender's cache does not help beyond what the learned prefix gives"
    if helps(prefix):
        tail += ", which helps by itself: a gain of a trained channel here would be adaptation, not a message"
    return "no transfer", numbers + tail + "."


def _condition(name: str) -> Condition:
    prompt = PLAIN_PROMPTS.get(name, "placeholder")
    return Condition(name, prompt=prompt, vector=None if name in PLAIN_PROMPTS else "kv", mode="prefix")


def plot(result: Result, path) -> None:
    """Δ accuracy and Δ log p(answer) per condition (a trained source can raise log p by adaptation
    alone: its shuffled control and the learned prefix show how much), and the attention mass on the
    delivered positions per layer."""
    conditions = result.data["conditions"]
    names = [c["name"] for c in conditions]
    with saved_figure(path, 1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1, 1]}) as (fig, axes):
        for ax, metric, label in (
            (axes[0], "accuracy", "Δ accuracy"),
            (axes[1], "logprob", "Δ log p(answer)"),
        ):
            values = [c[f"delta_{metric}"] for c in conditions]
            errors = error_bars(values, [c[f"delta_{metric}_ci"] for c in conditions])
            ax.barh(range(len(names)), values, xerr=errors, color="tab:blue", alpha=0.7)
            ax.set_yticks(range(len(names)), names if ax is axes[0] else [], fontsize=7)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.invert_yaxis()
            ax.set_xlabel(f"{label} vs baseline (95% CI, two-level bootstrap)")
        for name, mass in result.data["attention_mass"].items():
            if " " not in name or name in (*CEILINGS, PREFIX, f"{FUSER} shuffled"):
                axes[2].plot(mass, marker=".", label=name)
        axes[2].set_xlabel("receiver layer")
        axes[2].set_ylabel("attention of the answer position on delivered positions")
        axes[2].legend(fontsize=7)
        fig.suptitle("KV channel: the sender's cache as a prefix of the receiver's")


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
