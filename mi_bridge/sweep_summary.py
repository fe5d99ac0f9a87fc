"""A sweep's summary: ``sweep.json`` (the grid and every cell's key numbers), ``report.md`` and one heatmap
per metric (sender layer x receiver layer), each written atomically."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from mi_bridge import grid
from mi_bridge.config import ExperimentConfig
from mi_bridge.files import write_text_atomic
from mi_bridge.report import render as report

METRICS = {
    "translated": "best translated Δ accuracy",
    "context_free": "context-free ceiling (Δ accuracy)",
    "normalized_cosine": "normalized cosine",
}
"""The numbers kept per cell in sweep.json, each drawn as a heatmap."""


def heatmaps(cells: list[grid.Cell], outcomes: dict, folder: Path) -> list[str]:
    """One figure per metric: sender layer x receiver layer, one panel per other grid combination."""
    panels: dict[str, dict] = {}
    for cell in cells:
        numbers = outcomes[cell.name].numbers
        if outcomes[cell.name].status == "done":
            c = cell.config
            title = " ".join(
                f"{name}@{revision}" if revision else name
                for name, revision in (
                    (c.sender_name, c.sender_revision),
                    (c.receiver_name, c.receiver_revision),
                )
            )
            title += "".join(f" {getattr(c.options, name)}" for name in c.options.grid_fields)
            panels.setdefault(title, {})[(numbers["layers"]["sender"], numbers["layers"]["receiver"])] = (
                numbers
            )
    names = []
    for metric, label in METRICS.items():
        if not any(metric in n for panel in panels.values() for n in panel.values()):
            continue
        name = f"heatmap_{metric}.png"
        with report.saved_figure(
            folder / name, 1, len(panels), squeeze=False, figsize=(4.5 * len(panels), 3.8)
        ) as (fig, axes):
            for ax, (title, panel) in zip(axes[0], panels.items(), strict=True):
                senders = sorted({s for s, _ in panel})
                receivers = sorted({r for _, r in panel})
                values = [
                    [panel.get((s, r), {}).get(metric, {}).get("mean", float("nan")) for r in receivers]
                    for s in senders
                ]
                values = np.array(values, dtype=float)
                if metric == "normalized_cosine":
                    image = ax.imshow(values, cmap="viridis")
                else:  # Δ accuracy: white at 0, gains red, losses blue
                    bound = max(float(np.nanmax(np.abs(values), initial=0.0)), 1e-6)
                    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
                if values.size <= 200:  # small grids: the numbers themselves
                    for (i, j), value in np.ndenumerate(values):
                        ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7)
                ax.set_xticks(range(len(receivers)), receivers)
                ax.set_yticks(range(len(senders)), senders)
                ax.set_xlabel("receiver layer")
                ax.set_ylabel("sender layer")
                ax.set_title(title, fontsize=9)
                fig.colorbar(image, ax=ax, label=label)
        names.append(name)
    return names


def write_summary(folder: Path, values: dict, base: ExperimentConfig, cells, outcomes: dict) -> None:
    """sweep.json, report.md and the heatmaps, each written atomically (also after Ctrl-C)."""
    rows = [
        {
            "name": cell.name,
            "folder": cell.name,
            **{k: v for k, v in vars(outcomes[cell.name]).items() if v is not None},
        }
        for cell in cells
    ]
    base_dict = {k: v for k, v in base.to_dict().items() if k not in (*grid.grid_fields(), "out", "extra")}
    data = {"grid": values, "config": base_dict, "cells": rows}
    write_text_atomic(folder / "sweep.json", json.dumps(data, indent=2) + "\n")
    figures = heatmaps(cells, outcomes, folder)

    def number(numbers: dict, key: str) -> str:
        if key not in numbers:
            return ""
        value = numbers[key]
        ci = f" [{value['ci'][0]:+.3f}, {value['ci'][1]:+.3f}]" if "ci" in value else ""
        return f"{value['mean']:+.3f}{ci}"

    counts = Counter(o.status for o in outcomes.values())
    lines = [
        "# Sweep",
        "",
        f"{len(cells)} cells: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending. "
        "Grid: "
        + ("; ".join(f"{k} {json.dumps(v)}" for k, v in values.items() if v != [None]) or "one cell")
        + ".",
        "",
    ]
    lines += report.md_table(
        ("cell", "status", "site", "best translated Δ acc", "context-free ceiling", "norm. cosine", "error"),
        [
            (
                f"[{cell.name}]({cell.name}/report.md)" if o.status == "done" else cell.name,
                o.status,
                o.numbers.get("site_class", ""),
                number(o.numbers, "translated"),
                number(o.numbers, "context_free"),
                number(o.numbers, "normalized_cosine"),
                o.error or "",
            )
            for cell in cells
            for o in [outcomes[cell.name]]
        ],
    )
    lines += ["", *(f"![{name}]({name})" for name in figures)]
    write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")
