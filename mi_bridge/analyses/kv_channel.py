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

import pandas as pd

from mi_bridge.analyses.common import run_script
from mi_bridge.core.evaluate import standard_conditions
from mi_bridge.protocols.split.analysis import AnalysisContext, evaluate_on_test, translated_vectors
from mi_bridge.protocols.split.experiment import summarize_condition
from mi_bridge.protocols.split.items import SeedItems, layer_table
from mi_bridge.protocols.split.kv_channel import (
    FULL_DEPTH,
    KVSettings,
    run_seed_kv,
)
from mi_bridge.protocols.split.kv_run import kv_item_table, one_model, site_bands
from mi_bridge.protocols.split.kv_summary import kv_panels, kv_section, kv_tables
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result

NAME = "kv_channel"
HYPOTHESIS = (
    "The sender's key-value cache, delivered to the receiver, helps it answer beyond what a learned constant "
    "prefix gives."
)
SEED_PROTOCOL = "not built for the seed protocol: both models read the same prompt there, so the receiver's own cache already holds everything the sender's cache could deliver"
RESIDUAL_BASELINE = "baseline (residual path)"
"""The residual conditions' own baseline: the injection path's run of Q, paired with them exactly."""


def analyze(ctx: AnalysisContext) -> Result:
    settings = KVSettings.of(ctx.config.options)
    n_boot = ctx.config.n_bootstrap
    residual = [c for c in standard_conditions(ctx.config.options.alphas, ("translated",)) if c.is_injection]
    residual_scores, runs = [], []
    sites = site_bands([ctx.receiver_layer], ctx.pair.receiver.cfg.n_layers)
    for seed in ctx.seeds:
        runs.append(run_seed_kv(seed, settings, ctx.config.batch_size, sites))
        vectors = {"translated": translated_vectors(seed, ctx.sender_layer, ctx.receiver_layer)}
        injected = evaluate_on_test(ctx, seed, vectors, residual)
        residual_scores.append(injected | {RESIDUAL_BASELINE: injected["baseline"]})
    items, position = [SeedItems.of(seed) for seed in ctx.seeds], ctx.config.options.position
    frames = [
        kv_item_table(items, runs, ctx.sender_layer, ctx.receiver_layer, position),
        layer_table(  # the residual bridge beside the channel, at the same site
            items,
            residual_scores,
            residual,
            part=f"kv channel, {FULL_DEPTH}",
            layer=ctx.receiver_layer,
            sender_layer=ctx.sender_layer,
            position=position,
        ),
    ]
    best_residual = max(
        (summarize_condition(n_boot, residual_scores, c, baseline=RESIDUAL_BASELINE) for c in residual),
        key=lambda s: s["delta_accuracy"],
    )
    section = kv_section(
        n_boot, ctx.config.min_oracle_gap, runs, {ctx.receiver_layer: best_residual}, one_model(ctx.config)
    )
    data = section | {
        "best_residual": best_residual,
        "settings": vars(settings),
        "items": pd.concat(frames, ignore_index=True),
    }
    tables = kv_tables(section, [best_residual])
    for table in tables:
        table.in_terminal = True
    return Result(NAME, HYPOTHESIS, section["verdict"], section["explanation"], tables, data)


def plot(result: Result, path) -> None:
    """``kv_summary.kv_panels``, with the best residual bridge at the site beside the KV conditions."""
    with saved_figure(path, 1, 3, figsize=(16, 4.8)) as (fig, axes):
        kv_panels(axes, result.data, [result.data["best_residual"]])
        fig.suptitle("KV channel: the sender's cache as a prefix of the receiver's")


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
