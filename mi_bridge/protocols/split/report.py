"""The split protocol's report: configuration, task validity, bridge fit, site, decomposition, the
verdict as a ``Result``, and its figure (rendering itself is ``mi_bridge.report``)."""

from __future__ import annotations

from pathlib import Path

from mi_bridge.report.render import ci_text, condition_table, saved_figure, seeds_text
from mi_bridge.report.result import Result, Table


def _checkpoint(model: dict) -> str:
    """The exact checkpoint of a model entry of results.json: revision and commit, or toy weights."""
    exact = model.get("identity")
    if not exact:
        return ", checkpoint unresolved" if "identity" in model else ""
    if "commit" in exact:
        return f", revision {exact['revision']} = commit {exact['commit'][:12]}"
    return f", weights {exact['weights_sha256'][:12]}"


def configuration_rows(results: dict) -> list[tuple[str, str]]:
    from mi_bridge.core.hooks import resid_post_name  # loads TransformerLens: only once results exist

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
            seeds_text(v["sender_hop1_accuracy"]["per_seed"]),
        ),
        (
            "sender greedy = B (full vocab)",
            f"{v['sender_greedy_match']['mean']:.3f}",
            seeds_text(v["sender_greedy_match"]["per_seed"]),
        ),
        (
            "receiver oracle accuracy",
            f"{v['receiver_oracle_accuracy']['mean']:.3f}",
            seeds_text(v["receiver_oracle_accuracy"]["per_seed"]),
        ),
        (
            "receiver text-relay accuracy",
            f"{v['relay_accuracy']['mean']:.3f}",
            seeds_text(v["relay_accuracy"]["per_seed"]),
        ),
        (
            "receiver baseline accuracy",
            f"{v['baseline_accuracy']['mean']:.3f}",
            seeds_text(v["baseline_accuracy"]["per_seed"]),
        ),
        ("chance (1/k)", f"{v['chance']:.3f}", ""),
        ("oracle - baseline", f"{v['oracle_gap']['mean']:+.3f}", f"95% CI {ci_text(v['oracle_gap']['ci'])}"),
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


def best_per_kind(results: dict) -> list[dict]:
    """The prompt conditions, then the best condition (by Δ accuracy) of every injected vector kind."""
    from mi_bridge.protocols.split.diagnosis import best

    conditions = results["conditions"]
    prompts = [c for c in conditions if c["vector"] is None and c["name"] != "baseline"]
    kinds = list(dict.fromkeys(c["vector"] for c in conditions if c["vector"] is not None))
    return prompts + [best(conditions, kind) for kind in kinds]


def site_rows(results: dict) -> list[tuple[str, str, str]]:
    site = results["site"]
    delta = lambda d: f"{d['mean']:+.3f} {ci_text(d['ci'])}"
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
            f"{site['follow_rate']['mean']:.3f} {ci_text(site['follow_rate']['ci'])}",
            f"n={site['follow_rate']['n']}",
        ),
    ]


def scan_rows(results: dict) -> list[tuple[str, ...]]:
    delta = lambda d: f"{d['mean']:+.3f} {ci_text(d['ci'])}"
    return [
        (
            str(r["layer"]),
            r["class"],
            delta(r["self_patch"]),
            delta(r["context_free"]),
            f"{r['follow_rate']['mean']:.3f} {ci_text(r['follow_rate']['ci'])}",
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
        rows.append((s["stage"], f"{value} {ci_text(s['ci'])}", str(s["n"]), status, note))
    return rows


DECOMPOSITION_HEADER = ("stage", "value [95% CI]", "n", "status", "what it measures")


def transfer_result(results: dict) -> Result:
    """The split protocol's run as a :class:`Result`: decomposition and site first, then validity, fit,
    the best condition per vector kind, and every condition (report.md, or ``--full``)."""
    from mi_bridge.protocols.split.diagnosis import HYPOTHESIS, verdict_label

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


def conditions_figure(results: dict, path: Path) -> None:
    """Δ accuracy with 95% CI, one panel per injected vector kind (rows: mode and α), with the oracle,
    the self-patch and the context-free ceiling as reference lines."""
    from mi_bridge.protocols.split.diagnosis import of_vector
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
