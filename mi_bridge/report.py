"""Rendering: tables, markdown and figures. The library returns data; this turns it into text and pictures
(progress bars and warnings live in ``progress.py``, so compute modules never import the renderer)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table as RichTable

from mi_bridge import progress
from mi_bridge.result import Result, Table

console = progress.console


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
    from mi_bridge.hooks import resid_post_name  # loads TransformerLens: only once results exist

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
        ("sender state", f"{resid_post_name(layers['sender'])} @ final"),
        ("injection site", f"{resid_post_name(layers['receiver'])} @ {config['position']}"),
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


FIT_METRICS = ("normalized_cosine", "raw_cosine", "centered_cosine", "r2", "l2_cosine", "l2_r2")
FIT_HEADER = ("predictor", "normalized cos", "raw cos", "centered cos", "R²", "L2 cos (paper)", "L2 R²")


def bridge_rows(results: dict) -> list[tuple[str, ...]]:
    bridge = results["bridge"]
    rows = [("bridge",) + tuple(f"{bridge[m]['mean']:.3f}" for m in FIT_METRICS)]
    for name, metrics in bridge["trivial_predictors"].items():
        rows.append((name.replace("_", " "),) + tuple(f"{metrics[m]['mean']:.3f}" for m in FIT_METRICS))
    return rows


def condition_cells(c: dict) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One condition's cells, and per cell a sign: +1 / -1 where that cell's CI excludes 0, else 0."""
    signs = {
        m: (1 if c[f"delta_{m}_ci"][0] > 0 else -1 if c[f"delta_{m}_ci"][1] < 0 else 0)
        for m in ("accuracy", "logprob")
    }
    cells = (
        c["name"],
        f"{c['accuracy']:.3f}",
        f"{c['delta_accuracy']:+.3f} {_ci(c['delta_accuracy_ci'])}",
        f"{c['gold_logprob']:.2f}",
        f"{c['delta_logprob']:+.2f} {_ci(c['delta_logprob_ci'])}",
        str(c["n"]),
    )
    return cells, (0, 0, signs["accuracy"], 0, signs["logprob"], 0)


CONDITION_HEADER = ("condition", "acc", "Δacc [95% CI]", "log p(C)", "Δlog p [95% CI]", "n")


def best_per_kind(results: dict) -> list[dict]:
    """The prompt conditions, then the best condition (by Δ accuracy) of every injected vector kind."""
    from mi_bridge.diagnosis import best

    conditions = results["conditions"]
    prompts = [c for c in conditions if c["vector"] is None and c["name"] != "baseline"]
    kinds = list(dict.fromkeys(c["vector"] for c in conditions if c["vector"] is not None))
    return prompts + [best(conditions, kind) for kind in kinds]


def site_rows(results: dict) -> list[tuple[str, str, str]]:
    site = results["site"]
    delta = lambda d: f"{d['mean']:+.3f} {_ci(d['ci'])}"
    return [
        ("class", site["class"], f"receiver layer {site['layer']}, {results['config']['position']}"),
        ("self-patch (own oracle state)", delta(site["self_patch"]), f"Δacc, {site['mode']}"),
        (
            "context-free self-patch (B alone)",
            delta(site["context_free"]),
            f"Δacc, {site['mode']}: the ceiling for a sender",
        ),
        ("counterfactual self-patch", delta(site["counterfactual"]), f"Δacc, {site['mode']}"),
        (
            "follow rate (answers the permuted C)",
            f"{site['follow_rate']['mean']:.3f} {_ci(site['follow_rate']['ci'])}",
            f"n={site['follow_rate']['n']}",
        ),
    ]


def scan_rows(results: dict) -> list[tuple[str, ...]]:
    delta = lambda d: f"{d['mean']:+.3f} {_ci(d['ci'])}"
    return [
        (
            str(r["layer"]),
            r["class"],
            delta(r["self_patch"]),
            delta(r["context_free"]),
            f"{r['follow_rate']['mean']:.3f} {_ci(r['follow_rate']['ci'])}",
        )
        for r in results.get("site_scan", [])
    ]


SCAN_HEADER = ("receiver layer", "class", "self-patch Δacc", "context-free Δacc", "follow rate")


def decomposition_rows(results: dict) -> list[tuple[str, ...]]:
    rows = []
    lost = results["decomposition"]["first_lost"]
    for s in results["decomposition"]["stages"]:
        if s["passed"] is None:
            rows.append((s["stage"], "not run", "", "", s["measures"]))
            continue
        value = f"{s['value']:+.3f}" if s["stage"] != "sender" else f"{s['value']:.3f}"
        status = "LOST here" if s["stage"] == lost else ("passes" if s["passed"] else "fails")
        note = f"{s['measures']} (vs {s['reference']:.3f})" if s["stage"] == "sender" else s["measures"]
        if "p_holm" in s:
            note += f" (Holm p = {s['p_holm']:.2g} over {s['family']})"
        rows.append((s["stage"], f"{value} {_ci(s['ci'])}", str(s["n"]), status, note))
    return rows


DECOMPOSITION_HEADER = ("stage", "value [95% CI]", "n", "status", "what it measures")


def transfer_result(results: dict) -> Result:
    """The split protocol's run as a :class:`Result`: decomposition and site first, then validity, fit,
    the best condition per vector kind, and every condition (report.md, or ``--full``)."""
    from mi_bridge.diagnosis import HYPOTHESIS, verdict_label

    decomposition = decomposition_rows(results)
    validity = validity_rows(results)
    best, every = best_per_kind(results), results["conditions"]
    tables = [
        Table(
            f"Where is the signal lost? (first lost: {results['decomposition']['first_lost'] or 'none'})",
            DECOMPOSITION_HEADER,
            decomposition,
            alerts=[r[3] == "LOST here" for r in decomposition],
        ),
        Table("Configuration", ("setting", "value"), configuration_rows(results)),
        Table(
            "Task validity (held-out items, all seeds)",
            ("measure", "mean", "per seed / note"),
            validity,
            alerts=[r[0] == "task valid" and r[1] == "NO" for r in validity],
        ),
        Table(
            "Site diagnosis (before any effect)", ("measure", "value [95% CI]", "note"), site_rows(results)
        ),
    ]
    if results.get("site_scan"):
        tables.append(Table("Site class per receiver layer (replace mode)", SCAN_HEADER, scan_rows(results)))
    tables += [
        Table(
            f"Bridge fit on held-out items (target: {results['bridge']['target']})",
            FIT_HEADER,
            bridge_rows(results),
        ),
        condition_table("Best condition per vector kind (Δ vs baseline, paired bootstrap 95% CI)", best),
        condition_table(
            f"All {len(every)} conditions (Δ vs baseline, paired bootstrap 95% CI)", every, in_terminal=False
        ),
    ]
    return Result("transfer", HYPOTHESIS, verdict_label(results), results["verdict"], tables, results)


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
    result: Result, figure: str | None = None, heading: str = "#", site: dict | None = None
) -> str:
    """report.md of any result: hypothesis, verdict, (site), tables, figure. Marked cells are bold."""
    lines = [f"{heading} {result.name}", "", f"**Hypothesis.** {result.hypothesis}", ""]
    lines += [f"**Verdict: {result.verdict}.** {result.explanation}", ""]
    if site is not None:
        lines += [f"**{site_summary(site)}** {site['explanation']}", ""]
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


def conditions_figure(results: dict, path: Path) -> None:
    """Δ accuracy with 95% CI, one panel per injected vector kind (rows: mode and α), with the oracle,
    the self-patch and the context-free ceiling as reference lines."""
    from mi_bridge.diagnosis import of_vector
    from mi_bridge.stats import error_bars

    conditions = results["conditions"]
    kinds = list(dict.fromkeys(c["vector"] for c in conditions if c["vector"] is not None))
    by_name = {c["name"]: c for c in conditions}
    site = results["site"]
    references = [
        (by_name["oracle"]["delta_accuracy"], "black", "--", "oracle"),
        (site["self_patch"]["mean"], "tab:green", ":", "self-patch (replace)"),
        (site["context_free"]["mean"], "tab:red", "-.", "context-free ceiling (replace)"),
    ]
    ncols = 2
    nrows = (len(kinds) + ncols - 1) // ncols
    with saved_figure(path, nrows, ncols, figsize=(10, 2.3 * nrows + 0.6), sharex=True, squeeze=False) as (
        fig,
        axes,
    ):
        for ax, kind in zip(axes.flat, kinds, strict=False):
            chosen = of_vector(conditions, kind)
            values = [c["delta_accuracy"] for c in chosen]
            ax.errorbar(
                values,
                range(len(chosen)),
                xerr=error_bars(values, [c["delta_accuracy_ci"] for c in chosen]),
                fmt="o",
                markersize=3,
                capsize=2,
                color="tab:blue",
            )
            for value, color, style, label in references:
                ax.axvline(value, color=color, linestyle=style, linewidth=1, label=label)
            ax.axvline(0, color="gray", linewidth=0.6)
            ax.set_yticks(range(len(chosen)), [c["name"][len(kind) + 1 :] for c in chosen], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(kind, fontsize=9)
            ax.tick_params(labelbottom=True)  # shared x axis, but a spare panel would hide a column's ticks
        spare = list(axes.flat)[len(kinds) :]
        for ax in spare:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("Δ accuracy vs baseline (95% CI)")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        (spare[0] if spare else axes.flat[0]).legend(handles, labels, loc="center", fontsize=8)
        fig.suptitle(
            f"{results['models']['sender']['name']} → {results['models']['receiver']['name']}, "
            f"site {site['class']} (receiver layer {site['layer']})",
            fontsize=10,
        )


# ---------------------------------------------------------------------------------------------------------
# Analyses (analyses/*.py)


def site_summary(site: dict) -> str:
    if site.get("protocol") == "seed":
        validity = site["validity"]
        return (
            f"Site: {site['class']} under --protocol seed (receiver layer {site['layer']}, every prompt "
            f"position); task validity {validity['gap']:+.3f} {_ci(validity['ci'])}, n={validity['n']}."
        )
    return (
        f"Site: {site['class']} (receiver layer {site['layer']}, {site['mode']}): self-patch "
        f"{site['self_patch']['mean']:+.3f} {_ci(site['self_patch']['ci'])}, context-free ceiling "
        f"{site['context_free']['mean']:+.3f} {_ci(site['context_free']['ci'])}, follow rate "
        f"{site['follow_rate']['mean']:.3f} {_ci(site['follow_rate']['ci'])}, n={site['self_patch']['n']}."
    )


def render_site(site: dict) -> None:
    out = Console(width=None if console.is_terminal else 160)
    style = "bold green" if site["class"] == "pre-lookup" else "bold yellow"
    out.print(
        Panel(f"[{style}]{site['class']}[/]: {site['explanation']}", title="Site diagnosis", expand=True)
    )
