"""The KV channel (``--kv-channel``, docs/kv_channel.md) as a section of a split run: per seed, the
channel (``kv_channel``) on the full cache and at each site of the run (the requested one and the second
site, where the run has one), beside the residual bridges of the same run. Its ``kv_channel`` entry of
results.json (``kv_summary``), the ``kv channel`` rows of items.parquet, its trained sources saved beside
the residual bridges, the report's KV tables and a row of three panels in the figure."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mi_bridge.config import ExperimentConfig
from mi_bridge.protocols.split import diagnosis
from mi_bridge.protocols.split.experiment import SeedData
from mi_bridge.protocols.split.items import SeedItems, layer_table
from mi_bridge.protocols.split.kv_channel import (
    FULL_DEPTH,
    PLAIN_PROMPTS,
    SeedKV,
    after_site,
    kv_conditions,
    run_seed_kv,
)
from mi_bridge.protocols.split.kv_report import kv_panels, kv_tables
from mi_bridge.protocols.split.kv_summary import kv_condition, kv_section
from mi_bridge.protocols.split.prepare import SeedContext
from mi_bridge.protocols.split.sections.base import Row, Section
from mi_bridge.report.result import Table

KV_PANELS_HEIGHT = 2.0
"""Inches the figure grows by for the KV channel's row of panels."""


class KVChannel(Section):
    key = "kv_channel"

    def enabled(self, options) -> bool:
        return options.kv.channel

    def evaluate(self, run):
        return run_kv(run.contexts, run.seeds, run.receiver_layer)

    def item_rows(self, items, run, position):
        return [kv_item_table(items, run.data[self.key], run.sender_layer, run.receiver_layer, position)]

    def summarize(self, config, run, results):
        return summarize_kv(config, results, run.data[self.key])

    def artifacts(self, staging, run) -> None:
        for seed, kv in zip(run.seeds, run.data[self.key], strict=True):
            for source in kv.sources.values():  # by kind: kv-linear, kv-fuser, kv-prefix
                source.save(staging / "bridge" / source.kind / f"seed{seed.bridge.metadata['seed']}")

    def tables(self, results):
        kv = results[self.key]
        verdict = Table(
            "KV channel (the second channel)", (f"verdict: {kv['verdict']}",), [(kv["explanation"],)]
        )
        return [("conditions", table) for table in (verdict, *kv_tables(kv))]

    def rows(self, results):
        def draw(fig, cell) -> None:
            cells = cell.subgridspec(1, 3, wspace=0.3)
            extra = [diagnosis.best_translated(results["conditions"])]
            kv_panels([fig.add_subplot(cells[0, i]) for i in range(3)], results[self.key], extra)

        return [Row(draw, KV_PANELS_HEIGHT)]

    def title(self, results) -> str:
        return f"; KV channel: {results[self.key]['verdict']}"


def site_layers(seeds: Sequence[SeedData], receiver_layer: int) -> list[int]:
    """The run's sites: the requested receiver layer, then the second site's layer where there is one."""
    second = seeds[0].sections.get("second_site")
    return [receiver_layer] + ([second.layer] if second is not None else [])


def site_bands(layers: Sequence[int], n_layers: int) -> list[int]:
    """The sites that have a band: a site at the receiver's last layer has no layer after it (its
    residual injection reaches the unembedding only), so the channel has no per-site reading there."""
    return [layer for layer in layers if layer < n_layers - 1]


def run_kv(contexts: Sequence[SeedContext], seeds: Sequence[SeedData], receiver_layer: int) -> list[SeedKV]:
    """Every seed's KV channel, on the same items and split as its residual bridges."""
    config = contexts[0].config
    n_layers = contexts[0].pair.receiver.cfg.n_layers
    sites = site_bands(site_layers(seeds, receiver_layer), n_layers)
    same = one_model(config)
    return [run_seed_kv(ctx, config.options.kv, config.batch_size, sites, same) for ctx in contexts]


def kv_item_table(
    items: Sequence[SeedItems], runs: Sequence[SeedKV], sender_layer: int, receiver_layer: int, position: str
) -> pd.DataFrame:
    """The channel's per-item rows: ``part`` = ``kv channel, every layer`` (with the plain prompts, at the
    requested receiver layer) and ``kv channel, after L<j>`` per site (at that site's layer)."""
    where = {"sender_layer": sender_layer, "position": position}
    source = runs[0].source
    full = [kv_condition(name, source) for name in (*PLAIN_PROMPTS[source], *kv_conditions(source))]
    frames = [
        layer_table(
            items,
            [r.scores for r in runs],
            full,
            part=f"kv channel, {FULL_DEPTH}",
            layer=receiver_layer,
            **where,
        )
    ]
    delivered = [kv_condition(name, source) for name in kv_conditions(source)]
    for layer in runs[0].sites:
        scores = [r.sites[layer] for r in runs]
        frames.append(
            layer_table(
                items, scores, delivered, part=f"kv channel, {after_site(layer)}", layer=layer, **where
            )
        )
    return pd.concat(frames, ignore_index=True)


def summarize_kv(config: ExperimentConfig, results: dict, runs: Sequence[SeedKV]) -> dict:
    """results.json's ``kv_channel``, each site beside the best residual bridge there (the translated
    condition the run's decomposition reads at that site)."""
    residual = {results["site"]["layer"]: diagnosis.best_translated(results["conditions"])}
    second = results.get("second_site")
    if second:
        residual[second["layer"]] = diagnosis.best_translated(second["conditions"])
    return kv_section(config.n_bootstrap, config.min_oracle_gap, runs, residual, one_model(config))


def one_model(config: ExperimentConfig) -> bool:
    """Whether sender and receiver are one checkpoint (name and revision): the self-pair of the trap."""
    return (config.sender_name, config.sender_revision) == (config.receiver_name, config.receiver_revision)
