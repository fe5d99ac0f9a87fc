"""The site scan (``--site-scan``, on by default): the replace-mode site controls at every receiver layer,
so that the verdict can name the layers where a sender-derived vector could help (the receiver's lookup
phase). results.json's ``site_scan`` (empty when off), the ``site scan`` rows of items.parquet, a report
table and the lookup-phase panel of the figure."""

from __future__ import annotations

import numpy as np

from mi_bridge.core.evaluate import BASELINE
from mi_bridge.protocols.split import diagnosis
from mi_bridge.protocols.split.experiment import SITE_CONDITIONS, SeedData, site_scan
from mi_bridge.protocols.split.items import layer_table
from mi_bridge.protocols.split.report import delta_text
from mi_bridge.protocols.split.sections.base import Row, Section
from mi_bridge.protocols.split.summary import summarize_conditions
from mi_bridge.report.result import Table
from mi_bridge.stats import error_bars, fmt_rate

CLASS_COLORS = {
    "pre-lookup": "tab:green",
    "post-lookup": "tab:red",
    "inert": "tab:gray",
    "undetermined": "tab:orange",
}
SCAN_HEADER = ("receiver layer", "class", "self-patch Δacc", "context-free Δacc", "follow rate")


class SiteScan(Section):
    key = "site_scan"
    after = "site"

    def enabled(self, options) -> bool:
        return options.site_scan

    def per_seed(self, ctx, seed) -> None:
        seed.sections[self.key] = site_scan(ctx)

    def item_rows(self, items, run, position):
        where = {"sender_layer": run.sender_layer, "position": position}
        conditions = [BASELINE, *SITE_CONDITIONS]
        return [
            layer_table(
                items,
                [s.sections[self.key][layer] for s in run.seeds],
                conditions,
                part="site scan",
                layer=layer,
                **where,
            )
            for layer in run.seeds[0].sections[self.key]
        ]

    def summarize(self, config, run, results):
        return summarize_site_scan(config.n_bootstrap, run.seeds)

    def idle(self) -> list:
        return []  # what records without a scan have always held

    def tables(self, results):
        return [
            ("site", Table("Site class per receiver layer (replace mode)", SCAN_HEADER, scan_rows(results)))
        ]

    def rows(self, results):
        return [Row(lambda fig, cell: lookup_panel(fig.add_subplot(cell), results))]


def summarize_site_scan(n_bootstrap: int, seeds: list[SeedData]) -> list[dict]:
    """The site section at every scanned receiver layer (the lookup phase of the receiver)."""
    follow = [s.follow_index for s in seeds]
    rows = []
    for layer in seeds[0].sections["site_scan"]:
        scores = [s.sections["site_scan"][layer] for s in seeds]
        summaries = {s["name"]: s for s in summarize_conditions(n_bootstrap, scores, SITE_CONDITIONS, follow)}
        rows.append(diagnosis.site_section(summaries, layer))
    return rows


def scan_rows(results: dict) -> list[tuple[str, ...]]:
    return [
        (
            str(r["layer"]),
            r["class"],
            delta_text(r["self_patch"]),
            delta_text(r["context_free"]),
            fmt_rate(r["follow_rate"]),
        )
        for r in results.get("site_scan", [])
    ]


def lookup_panel(ax, results: dict) -> None:
    """Per receiver layer (site scan, replace mode): the context-free ceiling and self-patch with their
    CIs, each layer's class in colour, the requested and the second site marked."""
    scan = results["site_scan"]
    layers = np.array([r["layer"] for r in scan])
    for key, marker, label in (
        ("context_free", "o", "context-free ceiling"),
        ("self_patch", "s", "self-patch"),
    ):
        values = [r[key]["mean"] for r in scan]
        ax.errorbar(
            layers + (0.08 if key == "self_patch" else 0),
            values,
            yerr=error_bars(values, [r[key]["ci"] for r in scan]),
            fmt=marker,
            markersize=4,
            capsize=2,
            color="black" if key == "context_free" else "tab:gray",
            label=f"{label} (Δacc, replace)",
        )
    for r in scan:
        ax.axvspan(
            r["layer"] - 0.4, r["layer"] + 0.4, color=CLASS_COLORS[r["class"]], alpha=0.15, linewidth=0
        )
        ax.text(r["layer"], 1.02, r["class"], transform=ax.get_xaxis_transform(), ha="center", fontsize=7)
    ax.axvline(
        results["site"]["layer"], color="tab:blue", linestyle="--", linewidth=1, label="requested site"
    )
    if results.get("second_site"):
        ax.axvline(
            results["second_site"]["layer"],
            color="tab:orange",
            linestyle="--",
            linewidth=1,
            label="second site",
        )
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.set_xticks(layers)
    ax.set_xlabel("receiver layer (lookup phase from the site scan)")
    ax.set_ylabel("Δ accuracy vs baseline")
    ax.legend(fontsize=7, loc="best")
