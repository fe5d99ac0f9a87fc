"""Rendering: the only module that imports rich. The library returns data; this turns it into text."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)
T = TypeVar("T")


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr (transient: it disappears when done, so reports stay clean)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)


def one_line_errors(body: Callable[[], int], interrupted: str) -> int:
    """Run a command: bad input (UserError) is one line and exit code 2, Ctrl-C one line and 130."""
    from mi_bridge.config import UserError

    try:
        return body()
    except UserError as err:
        error(str(err))
        return 2
    except KeyboardInterrupt:
        error(f"interrupted; {interrupted}")
        return 130


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def error(message: str) -> None:
    """One line, no traceback."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------
# Tables shared by the terminal (rich) and report.md (markdown)


def _ci(interval: list[float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def _seeds(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def _checkpoint(model: dict) -> str:
    """The exact checkpoint of a model entry of results.json: revision and commit, or toy weights."""
    exact = model.get("identity")
    if not exact:
        return ", checkpoint unresolved" if "identity" in model else ""
    if "commit" in exact:
        return f", revision {exact['revision']} = commit {exact['commit'][:12]}"
    return f", weights {exact['weights_sha256'][:12]}"


def configuration_rows(results: dict) -> list[tuple[str, str]]:
    config, layers, models = results["config"], results["layers"], results["models"]
    return [
        ("pair", config["pair"]),
        (
            "sender",
            f"{models['sender']['name']} ({models['sender']['n_layers']} layers, d={models['sender']['d_model']}"
            f"{_checkpoint(models['sender'])})",
        ),
        (
            "receiver",
            f"{models['receiver']['name']} ({models['receiver']['n_layers']} layers, d={models['receiver']['d_model']}"
            f"{_checkpoint(models['receiver'])})",
        ),
        ("dtype", config.get("dtype", "float32")),
        ("sender state", f"blocks.{layers['sender']}.hook_resid_post @ final"),
        ("injection site", f"blocks.{layers['receiver']}.hook_resid_post @ {config['position']}"),
        ("bridge target", config["target"]),
        (
            "k / items / seeds",
            f"{config['k']} facts per hop / {config['n_items']} per seed "
            f"({results['n_test']} held out) / {config['seeds']}",
        ),
        ("alphas", ", ".join(f"{a:g}" for a in config["alphas"])),
    ]


def validity_rows(results: dict) -> list[tuple[str, str, str]]:
    v = results["validity"]
    rows = [
        (
            "sender hop-1 accuracy (k-way)",
            f"{v['sender_hop1_accuracy']['mean']:.3f}",
            _seeds(v["sender_hop1_accuracy"]["per_seed"]),
        ),
        (
            "sender greedy = B (full vocab)",
            f"{v['sender_greedy_match']['mean']:.3f}",
            _seeds(v["sender_greedy_match"]["per_seed"]),
        ),
        (
            "receiver oracle accuracy",
            f"{v['receiver_oracle_accuracy']['mean']:.3f}",
            _seeds(v["receiver_oracle_accuracy"]["per_seed"]),
        ),
        (
            "receiver text-relay accuracy",
            f"{v['relay_accuracy']['mean']:.3f}",
            _seeds(v["relay_accuracy"]["per_seed"]),
        ),
        (
            "receiver baseline accuracy",
            f"{v['baseline_accuracy']['mean']:.3f}",
            _seeds(v["baseline_accuracy"]["per_seed"]),
        ),
        ("chance (1/k)", f"{v['chance']:.3f}", ""),
        ("oracle - baseline", f"{v['oracle_gap']['mean']:+.3f}", f"95% CI {_ci(v['oracle_gap']['ci'])}"),
        ("task valid", "yes" if v["valid"] else "NO", f"needs gap >= {v['min_oracle_gap']} with CI above 0"),
    ]
    return rows


FIT_METRICS = ("normalized_cosine", "raw_cosine", "centered_cosine", "r2")


def bridge_rows(results: dict) -> list[tuple[str, ...]]:
    bridge = results["bridge"]
    rows = [("bridge",) + tuple(f"{bridge[m]['mean']:.3f}" for m in FIT_METRICS)]
    for name, metrics in bridge["trivial_predictors"].items():
        rows.append((name.replace("_", " "),) + tuple(f"{metrics[m]['mean']:.3f}" for m in FIT_METRICS))
    return rows


def condition_rows(results: dict) -> list[tuple[tuple[str, ...], int]]:
    """Rows and a sign: +1 / -1 where the accuracy or log-prob CI excludes 0, else 0."""
    rows = []
    for c in results["conditions"]:
        sign = 0
        for key in ("delta_accuracy", "delta_logprob"):
            low, high = c[f"{key}_ci"]
            if low > 0 or high < 0:
                sign = sign or (1 if low > 0 else -1)
        cells = (
            c["name"],
            f"{c['accuracy']:.3f}",
            f"{c['delta_accuracy']:+.3f}",
            _ci(c["delta_accuracy_ci"]),
            f"{c['gold_logprob']:.2f}",
            f"{c['delta_logprob']:+.2f}",
            _ci(c["delta_logprob_ci"]),
            str(c["n"]),
        )
        rows.append((cells, sign))
    return rows


CONDITION_HEADER = ("condition", "acc", "Δacc", "95% CI", "log p(C)", "Δlog p", "95% CI", "n")


def render(results: dict) -> None:
    """The rich terminal report: configuration, validity, bridge fit, conditions, verdict."""
    out = Console(width=None if console.is_terminal else 132)
    table = Table(title="Configuration", box=box.SIMPLE, show_header=False)
    for key, value in configuration_rows(results):
        table.add_row(key, value)
    out.print(table)

    table = Table(title="Task validity (held-out items, all seeds)", box=box.SIMPLE)
    for column in ("measure", "mean", "per seed / note"):
        table.add_column(column)
    for row in validity_rows(results):
        style = "bold red" if row[0] == "task valid" and row[1] == "NO" else None
        table.add_row(*row, style=style)
    out.print(table)

    table = Table(
        title=f"Bridge fit on held-out items (target: {results['bridge']['target']})", box=box.SIMPLE
    )
    for column in ("predictor", "normalized cos", "raw cos", "centered cos", "R²"):
        table.add_column(column, justify="right")
    for row in bridge_rows(results):
        table.add_row(*row)
    out.print(table)

    table = Table(
        title="Conditions: Δ vs baseline, paired bootstrap 95% CI (green/red: CI excludes 0)", box=box.SIMPLE
    )
    for i, column in enumerate(CONDITION_HEADER):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    for cells, sign in condition_rows(results):
        table.add_row(*cells, style={1: "green", -1: "red", 0: None}[sign])
    out.print(table)
    out.print(Panel(results["verdict"], title="Verdict", expand=True))


def markdown(results: dict, figure: str | None = None) -> str:
    def md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]

    lines = ["# mi_bridge run", "", "## Configuration", ""]
    lines += md_table(("setting", "value"), configuration_rows(results))
    lines += ["", "## Task validity", ""]
    lines += md_table(("measure", "mean", "per seed / note"), validity_rows(results))
    lines += ["", f"## Bridge fit (held out, target {results['bridge']['target']})", ""]
    lines += md_table(("predictor", "normalized cos", "raw cos", "centered cos", "R²"), bridge_rows(results))
    lines += ["", "## Conditions (Δ vs baseline, paired bootstrap 95% CI; **bold**: CI excludes 0)", ""]
    rows = [tuple(f"**{x}**" if sign else x for x in cells) for cells, sign in condition_rows(results)]
    lines += md_table(CONDITION_HEADER, rows)
    if figure:
        lines += ["", f"![Δ accuracy per condition]({figure})"]
    lines += ["", "## Verdict", "", results["verdict"], ""]
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


def conditions_figure(results: dict, path: Path) -> None:
    """Forest plot: Δ accuracy with 95% CI for every condition, grouped by what is injected."""
    conditions = [c for c in results["conditions"] if c["name"] != "baseline"]
    with saved_figure(path, figsize=(7, 0.22 * len(conditions) + 1.2)) as (fig, ax):
        colors = {
            None: "black",
            "translated": "tab:blue",
            "random": "tab:gray",
            "shuffled": "tab:orange",
            "mean": "tab:purple",
            "self-patch": "tab:green",
        }
        for row, c in enumerate(reversed(conditions)):
            low, high = c["delta_accuracy_ci"]
            ax.errorbar(
                c["delta_accuracy"],
                row,
                xerr=[[c["delta_accuracy"] - low], [high - c["delta_accuracy"]]],
                fmt="o",
                color=colors[c["vector"]],
                markersize=3,
                capsize=2,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(conditions)), [c["name"] for c in reversed(conditions)], fontsize=7)
        ax.set_xlabel("Δ accuracy vs baseline (95% CI)")
        ax.set_title(
            f"{results['models']['sender']['name']} → {results['models']['receiver']['name']}", fontsize=9
        )


# ---------------------------------------------------------------------------------------------------------
# Analyses (analyses/*.py)

VERDICT_STYLE = {"supported": "bold green", "not supported": "bold red", "inconclusive": "bold yellow"}


def render_analysis(result) -> None:
    out = Console(width=None if console.is_terminal else 132)
    out.print(Panel(result.hypothesis, title=f"{result.name}: hypothesis", expand=True))
    for spec in result.tables:
        table = Table(title=spec.title, box=box.SIMPLE)
        for i, column in enumerate(spec.header):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in spec.rows:
            table.add_row(*row)
        out.print(table)
    style = VERDICT_STYLE[result.verdict]
    out.print(
        Panel(f"[{style}]{result.verdict.upper()}[/]: {result.explanation}", title="Verdict", expand=True)
    )


def analysis_markdown(result, figure: str | None = None, heading: str = "#") -> str:
    lines = [f"{heading} {result.name}", "", f"**Hypothesis.** {result.hypothesis}", ""]
    for spec in result.tables:
        lines += [
            f"**{spec.title}**",
            "",
            "| " + " | ".join(spec.header) + " |",
            "|" + "---|" * len(spec.header),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in spec.rows]
        lines.append("")
    if figure:
        lines += [f"![{result.name}]({figure})", ""]
    lines += [f"**Verdict: {result.verdict}.** {result.explanation}", ""]
    return "\n".join(lines)
