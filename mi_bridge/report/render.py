"""Rendering: tables, markdown and figures. The library returns data; this turns it into text and pictures
(progress bars and warnings live in ``progress.py``, so compute modules never import the renderer)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table as RichTable

from mi_bridge.core import progress
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import DIGITS, fmt_ci, fmt_delta, fmt_estimate, fmt_rate, holm_marks

console = progress.console


# ---------------------------------------------------------------------------------------------------------
# Tables shared by the terminal (rich) and report.md (markdown)


def ci_text(interval: list[float], digits: int = DIGITS) -> str:
    return fmt_ci(interval, digits)


def seeds_text(values: list[float], signed: bool = False) -> str:
    return " ".join(f"{v:{'+' if signed else ''}.{DIGITS}f}" for v in values)


def condition_marks(
    conditions: list[dict], family: Callable[[dict], str | None] | None = None
) -> dict[str, tuple[int, int]]:
    """Per condition name, the marks of its Δacc and Δlog p cells (+1 / -1 / 0, ``stats.holm_marks``):
    each metric corrected over the condition's family (``family``; default: all of ``conditions``;
    None: unmarked). Δ log p of a condition with ``vs_matched_control`` is read against that control,
    never against 0: log p rises under almost any perturbation of an injection's size."""
    family = family or (lambda c: "all")
    groups: dict[str, list[dict]] = {}
    for c in conditions:
        if (name := family(c)) is not None:
            groups.setdefault(name, []).append(c)
    marks = {c["name"]: (0, 0) for c in conditions}
    for members in groups.values():
        accuracy = holm_marks(members, "accuracy")
        matched = [c for c in members if "vs_matched_control" in c]
        plain = [c for c in members if "vs_matched_control" not in c and "delta_logprob_p" in c]
        logprob = dict(zip([c["name"] for c in plain], holm_marks(plain, "logprob"), strict=True))
        logprob |= dict(
            zip(
                [c["name"] for c in matched],
                holm_marks(matched, "logprob", "vs_matched_control"),
                strict=True,
            )
        )
        for c, mark in zip(members, accuracy, strict=True):
            marks[c["name"]] = (mark, logprob.get(c["name"], 0))
    return marks


def condition_cells(
    c: dict, marks: tuple[int, int], matched_column: bool
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One condition's cells, and per cell its mark (``condition_marks``)."""
    accuracy = (
        fmt_estimate(c["accuracy"], c["accuracy_ci"], signed=False)
        if "accuracy_ci" in c
        else f"{c['accuracy']:.3f}"
    )
    per_seed = seeds_text(c["delta_accuracy_per_seed"], signed=True) if "delta_accuracy_per_seed" in c else ""
    vs = c.get("vs_matched_control")
    cells = [
        c["name"],
        accuracy,
        fmt_delta(c),
        per_seed,
        f"{c['gold_logprob']:.{DIGITS}f}",
        fmt_delta(c, "logprob"),
    ]
    cell_marks = [0, 0, marks[0], 0, 0, 0 if vs else marks[1]]
    if matched_column:
        cells.append(fmt_delta(vs, "logprob") if vs else "")
        cell_marks.append(marks[1] if vs else 0)
    return (*cells, str(c["n"])), (*cell_marks, 0)


CONDITION_HEADER = (
    "condition",
    "acc [95% CI]",
    "Δacc [95% CI]",
    "Δacc per seed",
    "log p(C)",
    "Δlog p [95% CI]",
)
MATCHED_HEADER = "Δlog p vs control [95% CI]"
"""A translated condition's Δ log p against its matched control (the mean vector, same mode and α)."""


def condition_table(
    title: str,
    conditions: list[dict],
    in_terminal: bool = True,
    every: list[dict] | None = None,
    family: Callable[[dict], str | None] | None = None,
) -> Table:
    """A table of condition summaries, marked where a cell survives the Holm correction of its family
    (computed over ``every`` condition of the run, default the ones shown: a best-of table is then
    marked as its members were in the full family)."""
    marks = condition_marks(every or conditions, family)
    matched = any("vs_matched_control" in c for c in conditions)
    cells = [condition_cells(c, marks[c["name"]], matched) for c in conditions]
    header = (*CONDITION_HEADER, *((MATCHED_HEADER,) if matched else ()), "n")
    # The terminal (160 columns off a tty) leaves out the absolute accuracy and log p; report.md has them.
    compact = tuple(i for i, column in enumerate(header) if column not in ("acc [95% CI]", "log p(C)"))
    return Table(
        title,
        header,
        [c for c, _ in cells],
        [m for _, m in cells],
        in_terminal=in_terminal,
        terminal_columns=compact,
    )


def md_table(header: tuple[str, ...], rows, marks=None) -> list[str]:
    """A markdown table; a marked cell (it survives the Holm correction of its family) is bold."""
    marks = marks or [(0,) * len(header)] * len(rows)
    cells = [
        tuple(f"**{cell}**" if mark else cell for cell, mark in zip(row, row_marks, strict=True))
        for row, row_marks in zip(rows, marks, strict=True)
    ]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in cells
    ]


VERDICT_STYLE = {
    "supported": "bold green",
    "not supported": "bold red",
    "inconclusive": "bold yellow",
    "transfer helps": "bold green",
    "no transfer": "bold red",
    "untestable here": "bold yellow",
}
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
        keep = spec.terminal_columns or tuple(range(len(spec.header)))
        pick = lambda cells, keep=keep: [cells[i] for i in keep]
        table = RichTable(title=spec.title, box=box.SIMPLE)
        for i, column in enumerate(pick(spec.header)):
            table.add_column(column, justify="left" if i == 0 else "right", no_wrap=spec.marks is not None)
        for i, row in enumerate(spec.rows):
            marks = spec.marks[i] if spec.marks else (0,) * len(row)
            cells = (
                f"[{MARK_STYLE[m]}]{cell}[/]" if m else cell
                for cell, m in zip(pick(row), pick(marks), strict=True)
            )
            table.add_row(*cells, style="bold red" if spec.alerts and spec.alerts[i] else None)
        out.print(table)
    style = VERDICT_STYLE[result.verdict]
    if result.parts is None:
        body = f"[{style}]{result.verdict.upper()}[/]: {result.explanation}"
    else:
        steps = "\n".join(f"  {s['command']}\n      {s['why']}" for s in result.parts["next"])
        body = (
            f"[{style}]{result.verdict.upper()}[/] {result.parts.get('headline', '')}\n"
            f"[bold]Result:[/] {result.parts['result']}\n"
            f"[bold]Why:[/] {result.parts['why']}\n[bold]Next:[/]\n{steps}"
        )
    out.print(Panel(body, title="Verdict", expand=True))


def result_markdown(
    result: Result, figure: str | None = None, heading: str = "#", context: str | None = None
) -> str:
    """report.md of any result: hypothesis, verdict, (a context line in bold), tables, figure. Marked
    cells are bold."""
    lines = [f"{heading} {result.name}", "", f"**Hypothesis.** {result.hypothesis}", ""]
    if result.parts is None:
        lines += [f"**Verdict: {result.verdict}.** {result.explanation}", ""]
    else:
        lines += [
            f"**Verdict: {result.verdict}** {result.parts.get('headline', '')}",
            "",
            f"- *Result*: {result.parts['result']}",
            f"- *Why*: {result.parts['why']}",
            "- *Next*:",
            *[f"  - `{s['command']}`: {s['why']}" for s in result.parts["next"]],
            "",
        ]
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
    """One line on the site: a protocol whose site is not the split protocol's classes writes its own
    (``summary``); else the class with self-patch, context-free ceiling and follow rate."""
    if "summary" in site:
        return site["summary"]
    return (
        f"Site: {site['class']} (receiver layer {site['layer']}, {site['mode']}): self-patch "
        f"{fmt_estimate(site['self_patch']['mean'], site['self_patch']['ci'])}, context-free ceiling "
        f"{fmt_estimate(site['context_free']['mean'], site['context_free']['ci'])}, follow rate "
        f"{fmt_rate(site['follow_rate'])}, n={site['self_patch']['n']}."
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
