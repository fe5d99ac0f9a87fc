"""Rendering: tables, markdown and figures. The library returns data; this turns it into text and pictures
(progress bars and warnings live in ``progress.py``, so compute modules never import the renderer)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table as RichTable

from mi_bridge.core import progress
from mi_bridge.report.result import Result, Table

console = progress.console


# ---------------------------------------------------------------------------------------------------------
# Tables shared by the terminal (rich) and report.md (markdown)


def ci_text(interval: list[float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def seeds_text(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def condition_cells(c: dict) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One condition's cells, and per cell a sign: +1 / -1 where that cell's CI excludes 0, else 0."""
    signs = {
        m: (1 if c[f"delta_{m}_ci"][0] > 0 else -1 if c[f"delta_{m}_ci"][1] < 0 else 0)
        for m in ("accuracy", "logprob")
    }
    cells = (
        c["name"],
        f"{c['accuracy']:.3f}",
        f"{c['delta_accuracy']:+.3f} {ci_text(c['delta_accuracy_ci'])}",
        f"{c['gold_logprob']:.2f}",
        f"{c['delta_logprob']:+.2f} {ci_text(c['delta_logprob_ci'])}",
        str(c["n"]),
    )
    return cells, (0, 0, signs["accuracy"], 0, signs["logprob"], 0)


CONDITION_HEADER = ("condition", "acc", "Δacc [95% CI]", "log p(C)", "Δlog p [95% CI]", "n")


def condition_table(title: str, conditions: list[dict], in_terminal: bool = True) -> Table:
    cells = [condition_cells(c) for c in conditions]
    return Table(
        title, CONDITION_HEADER, [c for c, _ in cells], [m for _, m in cells], in_terminal=in_terminal
    )


def md_table(header: tuple[str, ...], rows, marks=None) -> list[str]:
    """A markdown table; a cell marked +1 / -1 (its CI excludes 0) is bold."""
    marks = marks or [(0,) * len(header)] * len(rows)
    cells = [
        tuple(f"**{cell}**" if mark else cell for cell, mark in zip(row, row_marks, strict=True))
        for row, row_marks in zip(rows, marks, strict=True)
    ]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in cells
    ]


VERDICT_STYLE = {"supported": "bold green", "not supported": "bold red", "inconclusive": "bold yellow"}
MARK_STYLE = {1: "green", -1: "red"}


def render_result(result: Result, full: bool = False) -> None:
    """The terminal report of any result: hypothesis, tables, verdict. Tables kept for report.md are
    named in one line, unless ``full``."""
    out = Console(width=None if console.is_terminal else 160)
    out.print(Panel(result.hypothesis, title=f"{result.name}: hypothesis", expand=True))
    for spec in result.tables:
        if not (spec.in_terminal or full):
            out.print(f"({spec.title}: in report.md, or --full)")
            continue
        table = RichTable(title=spec.title, box=box.SIMPLE)
        for i, column in enumerate(spec.header):
            table.add_column(column, justify="left" if i == 0 else "right", no_wrap=spec.marks is not None)
        for i, row in enumerate(spec.rows):
            marks = spec.marks[i] if spec.marks else (0,) * len(row)
            cells = (f"[{MARK_STYLE[m]}]{cell}[/]" if m else cell for cell, m in zip(row, marks, strict=True))
            table.add_row(*cells, style="bold red" if spec.alerts and spec.alerts[i] else None)
        out.print(table)
    style = VERDICT_STYLE[result.verdict]
    out.print(
        Panel(f"[{style}]{result.verdict.upper()}[/]: {result.explanation}", title="Verdict", expand=True)
    )


def result_markdown(
    result: Result, figure: str | None = None, heading: str = "#", context: str | None = None
) -> str:
    """report.md of any result: hypothesis, verdict, (a context line in bold), tables, figure. Marked
    cells are bold."""
    lines = [f"{heading} {result.name}", "", f"**Hypothesis.** {result.hypothesis}", ""]
    lines += [f"**Verdict: {result.verdict}.** {result.explanation}", ""]
    if context is not None:
        lines += [context, ""]
    for spec in result.tables:
        lines += [f"{heading}# {spec.title}", ""] + md_table(spec.header, spec.rows, spec.marks) + [""]
    if figure:
        lines += [f"![{result.name}]({figure})", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def saved_figure(path: Path, nrows: int = 1, ncols: int = 1, **subplots):
    """``(fig, axes)`` from matplotlib (headless Agg backend), laid out and saved to ``path`` on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Analyses (analyses/*.py)


# ---------------------------------------------------------------------------------------------------------
# The site diagnosis (both protocols write one, in the same shape)


def site_summary(site: dict) -> str:
    if site.get("protocol") == "seed":
        validity = site["validity"]
        return (
            f"Site: {site['class']} under --protocol seed (receiver layer {site['layer']}, every prompt "
            f"position); task validity {validity['gap']:+.3f} {ci_text(validity['ci'])}, n={validity['n']}."
        )
    return (
        f"Site: {site['class']} (receiver layer {site['layer']}, {site['mode']}): self-patch "
        f"{site['self_patch']['mean']:+.3f} {ci_text(site['self_patch']['ci'])}, context-free ceiling "
        f"{site['context_free']['mean']:+.3f} {ci_text(site['context_free']['ci'])}, follow rate "
        f"{site['follow_rate']['mean']:.3f} {ci_text(site['follow_rate']['ci'])}, n={site['self_patch']['n']}."
    )


def render_site(site: dict) -> None:
    out = Console(width=None if console.is_terminal else 160)
    style = "bold green" if site["class"] == "pre-lookup" else "bold yellow"
    out.print(
        Panel(f"[{style}]{site['class']}[/]: {site['explanation']}", title="Site diagnosis", expand=True)
    )


def site_line(site: dict) -> str:
    """The site diagnosis as one report.md line: its summary in bold, then why."""
    return f"**{site_summary(site)}** {site['explanation']}"
