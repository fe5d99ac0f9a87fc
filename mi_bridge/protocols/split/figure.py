"""The split run's figure.png: Δ accuracy per condition, one panel per injected vector kind (the
sections' series beside the requested site's: the second site), and below them each present section's
rows (``sections``: the receiver's lookup phase from the site scan, the KV channel's panels)."""

from __future__ import annotations

from pathlib import Path

from mi_bridge.protocols.split import sections
from mi_bridge.protocols.split.diagnosis import of_vector
from mi_bridge.report.render import saved_figure
from mi_bridge.stats import error_bars


def condition_panel(ax, conditions: list[dict], beside: list, kind: str, references) -> None:
    """Δ accuracy with its CI per condition of ``kind`` (rows: mode and α); each of the sections' series
    (``beside``: conditions, colour, label; the second site's) beside it."""
    chosen = of_vector(conditions, kind)
    series = [(chosen, 0.0, "tab:blue")]
    for other, color, _ in beside:
        at_other = {c["name"]: c for c in of_vector(other, kind)}
        series.append(([at_other.get(c["name"]) for c in chosen], 0.3 * len(series), color))
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


def conditions_figure(results: dict, path: Path) -> None:
    """Δ accuracy with 95% CI, one panel per injected vector kind (rows: mode and α; beside: the present
    sections' series, e.g. the second site in orange), with the oracle, the self-patch and the
    context-free ceiling as reference lines; below, each present section's rows (the lookup phase from
    the site scan, the KV channel's panels)."""
    conditions = results["conditions"]
    present = sections.present(results)
    beside = [series for section in present for series in section.series(results)]
    rows = [row for section in present for row in section.rows(results)]
    kinds = list(dict.fromkeys(c["vector"] for c in conditions if c["vector"] is not None))
    by_name = {c["name"]: c for c in conditions}
    site = results["site"]
    references = [
        (by_name["oracle"]["delta_accuracy"], "black", "--", "oracle"),
        (site["self_patch"]["mean"], "tab:green", ":", "self-patch (replace)"),
        (site["context_free"]["mean"], "tab:red", "-.", "context-free ceiling (replace)"),
    ]
    ncols, below = 2, len(rows)  # rows of their own, unshared
    nrows = (len(kinds) + ncols - 1) // ncols + below
    size = (10, 2.3 * nrows + 0.6 + sum(row.extra_height for row in rows))
    with saved_figure(path, nrows, ncols, figsize=size, sharex=True, squeeze=False) as (fig, axes):
        if below:
            grid = axes[-1, 0].get_gridspec()
            for ax in axes[-below:].flat:
                ax.remove()
        panels = list(axes[:-below].flat if below else axes.flat)
        for ax, kind in zip(panels, kinds, strict=False):
            condition_panel(ax, conditions, beside, kind, references)
        spare = panels[len(kinds) :]
        for ax in spare:
            ax.axis("off")
        for ax in panels[-ncols:]:
            ax.set_xlabel("Δ accuracy vs baseline (95% CI)")
        handles, labels = panels[0].get_legend_handles_labels()
        title = "blue: requested site" + "".join(f", {color[4:]}: {label}" for _, color, label in beside)
        legend_ax = spare[0] if spare else panels[0]
        legend_ax.legend(handles, labels, loc="center", fontsize=8, title=title, title_fontsize=8)
        for i, row in enumerate(rows):
            row.draw(fig, grid[nrows - below + i, :])
        fig.suptitle(
            f"{results['models']['sender']['name']} → {results['models']['receiver']['name']}, "
            f"site {site['class']} (receiver layer {site['layer']})"
            + "".join(section.title(results) for section in present),
            fontsize=10,
        )
