"""The split run's figure.png: Δ accuracy per condition, one panel per injected vector kind (the second
site beside the requested one), the receiver's lookup phase per layer from the site scan, and with
``--kv-channel`` the KV channel's panels (``kv_summary.kv_panels``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mi_bridge.protocols.split.diagnosis import best_translated, of_vector
from mi_bridge.report.render import saved_figure
from mi_bridge.stats import error_bars

CLASS_COLORS = {
    "pre-lookup": "tab:green",
    "post-lookup": "tab:red",
    "inert": "tab:gray",
    "undetermined": "tab:orange",
}


def condition_panel(ax, conditions: list[dict], second: list[dict] | None, kind: str, references) -> None:
    """Δ accuracy with its CI per condition of ``kind`` (rows: mode and α); the second site's beside."""
    chosen = of_vector(conditions, kind)
    series = [(chosen, 0.0, "tab:blue")]
    if second:
        at_second = {c["name"]: c for c in of_vector(second, kind)}
        series.append(([at_second.get(c["name"]) for c in chosen], 0.3, "tab:orange"))
    for rows, offset, color in series:
        kept = [(i, c) for i, c in enumerate(rows) if c is not None]
        if not kept:
            continue
        values = [c["delta_accuracy"] for _, c in kept]
        ax.errorbar(
            values,
            [i + offset for i, _ in kept],
            xerr=error_bars(values, [c["delta_accuracy_ci"] for _, c in kept]),
            fmt="o",
            markersize=3,
            capsize=2,
            color=color,
        )
    for value, color, style, label in references:
        ax.axvline(value, color=color, linestyle=style, linewidth=1, label=label)
    ax.axvline(0, color="gray", linewidth=0.6)
    ax.set_yticks(range(len(chosen)), [c["name"][len(kind) + 1 :] for c in chosen], fontsize=7)
    ax.invert_yaxis()
    ax.set_title(kind, fontsize=9)
    ax.tick_params(labelbottom=True)  # shared x axis, but a spare panel would hide a column's ticks


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


def conditions_figure(results: dict, path: Path) -> None:
    """Δ accuracy with 95% CI, one panel per injected vector kind (rows: mode and α; orange: the second
    site), with the oracle, the self-patch and the context-free ceiling as reference lines; below, the
    lookup-phase panel when the run scanned its receiver's layers."""
    conditions = results["conditions"]
    second = results.get("second_site", {}).get("conditions")
    kinds = list(dict.fromkeys(c["vector"] for c in conditions if c["vector"] is not None))
    by_name = {c["name"]: c for c in conditions}
    site = results["site"]
    references = [
        (by_name["oracle"]["delta_accuracy"], "black", "--", "oracle"),
        (site["self_patch"]["mean"], "tab:green", ":", "self-patch (replace)"),
        (site["context_free"]["mean"], "tab:red", "-.", "context-free ceiling (replace)"),
    ]
    ncols, scanned, kv = 2, bool(results.get("site_scan")), results.get("kv_channel")
    below = scanned + bool(kv)  # rows of their own, unshared: the lookup panel, the KV channel
    nrows = (len(kinds) + ncols - 1) // ncols + below
    size = (10, 2.3 * nrows + 0.6 + 2.0 * bool(kv))
    with saved_figure(path, nrows, ncols, figsize=size, sharex=True, squeeze=False) as (fig, axes):
        if below:
            grid = axes[-1, 0].get_gridspec()
            for ax in axes[-below:].flat:
                ax.remove()
        panels = list(axes[:-below].flat if below else axes.flat)
        for ax, kind in zip(panels, kinds, strict=False):
            condition_panel(ax, conditions, second, kind, references)
        spare = panels[len(kinds) :]
        for ax in spare:
            ax.axis("off")
        for ax in panels[-ncols:]:
            ax.set_xlabel("Δ accuracy vs baseline (95% CI)")
        handles, labels = panels[0].get_legend_handles_labels()
        title = "blue: requested site" + (", orange: second site" if second else "")
        legend_ax = spare[0] if spare else panels[0]
        legend_ax.legend(handles, labels, loc="center", fontsize=8, title=title, title_fontsize=8)
        if scanned:
            lookup_panel(fig.add_subplot(grid[nrows - below, :]), results)
        if kv:
            from mi_bridge.protocols.split.kv_summary import kv_panels

            cells = grid[nrows - 1, :].subgridspec(1, 3, wspace=0.3)
            kv_panels([fig.add_subplot(cells[0, i]) for i in range(3)], kv, [best_translated(conditions)])
        fig.suptitle(
            f"{results['models']['sender']['name']} → {results['models']['receiver']['name']}, "
            f"site {site['class']} (receiver layer {site['layer']})"
            + (f"; KV channel: {kv['verdict']}" if kv else ""),
            fontsize=10,
        )
