"""The split protocol's report: the decomposition, configuration, task validity, site, bridge fit and
conditions, with each present section's tables (the sites side by side, the site scan, the KV channel),
and the verdict as a ``Result`` (rendering itself is ``mi_bridge.report``; the figure is ``figure.py``)."""

from __future__ import annotations

from mi_bridge.protocols.split import diagnosis, sections
from mi_bridge.report.render import condition_table, seeds_text
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import fmt_estimate, fmt_rate


def _checkpoint(model: dict) -> str:
    """The exact checkpoint of a model entry of results.json: revision and commit, or toy weights."""
    exact = model.get("identity")
    if not exact:
        return ", checkpoint unresolved" if "identity" in model else ""
    if "commit" in exact:
        return f", revision {exact['revision']} = commit {exact['commit'][:12]}"
    return f", weights {exact['weights_sha256'][:12]}"


def configuration_rows(results: dict) -> list[tuple[str, str]]:
    from mi_bridge.core.hook_names import resid_post_name  # loads TransformerLens: only once results exist

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
    """Rates with their exact binomial CI and per-seed values; the oracle gap with its bootstrap CI."""
    v = results["validity"]
    rate = lambda r: fmt_rate(r) if "ci" in r else f"{r['mean']:.3f}"  # results.json before exact CIs
    rows = [
        (label, rate(v[key]), seeds_text(v[key]["per_seed"]))
        for label, key in (
            ("sender hop-1 accuracy (k-way)", "sender_hop1_accuracy"),
            ("sender greedy = B (full vocab)", "sender_greedy_match"),
            ("receiver oracle accuracy", "receiver_oracle_accuracy"),
            ("receiver text-relay accuracy", "relay_accuracy"),
            ("receiver baseline accuracy", "baseline_accuracy"),
        )
    ]
    gap = v["oracle_gap"]
    rows += [
        ("chance (1/k)", f"{v['chance']:.3f}", ""),
        ("oracle - baseline", fmt_estimate(gap["mean"], gap["ci"]), "two-level bootstrap 95% CI"),
        ("task valid", "yes" if v["valid"] else "NO", f"needs gap >= {v['min_oracle_gap']} with CI above 0"),
    ]
    return rows


FIT_METRICS = ("normalized_cosine", "raw_cosine", "centered_cosine", "r2", "l2_cosine", "l2_r2")


FIT_HEADER = ("predictor", "normalized cos", "raw cos", "centered cos", "R²", "L2 cos (paper)", "L2 R²")


def bridge_rows(bridge: dict) -> list[tuple[str, ...]]:
    rows = [("bridge",) + tuple(f"{bridge[m]['mean']:.3f}" for m in FIT_METRICS)]
    for name, metrics in bridge["trivial_predictors"].items():
        rows.append((name.replace("_", " "),) + tuple(f"{metrics[m]['mean']:.3f}" for m in FIT_METRICS))
    return rows


def of_kind(conditions: list[dict], kind: str) -> dict | None:
    """The condition of one vector kind the verdict reads: the best surviving translated condition (else
    the best by mean), or the best of another kind by mean; None for a kind not run (``--conditions``)."""
    return diagnosis.best_translated(conditions) if kind == "translated" else diagnosis.best(conditions, kind)


def best_per_kind(conditions: list[dict]) -> list[dict]:
    """The prompt conditions, then :func:`of_kind` for every injected vector kind."""
    prompts = [c for c in conditions if c["vector"] is None and c["name"] != "baseline"]
    kinds = list(dict.fromkeys(c["vector"] for c in conditions if c["vector"] is not None))
    return prompts + [of_kind(conditions, kind) for kind in kinds]


def delta_text(d: dict) -> str:
    return fmt_estimate(d["mean"], d["ci"])


def site_rows(results: dict) -> list[tuple[str, str, str]]:
    site = results["site"]
    return [
        ("class", site["class"], f"receiver layer {site['layer']}, {results['config']['position']}"),
        ("self-patch (own oracle state)", delta_text(site["self_patch"]), f"Δacc, {site['mode']}"),
        (
            "context-free self-patch (B alone)",
            delta_text(site["context_free"]),
            f"Δacc, {site['mode']}: the context-free ceiling, the one used everywhere",
        ),
        ("counterfactual self-patch", delta_text(site["counterfactual"]), f"Δacc, {site['mode']}"),
        (
            "follow rate (answers the permuted C)",
            fmt_rate(site["follow_rate"]),
            f"n={site['follow_rate']['n']}, exact binomial CI",
        ),
    ]


def decomposition_rows(decomposition: dict) -> list[tuple[str, ...]]:
    rows = []
    for s in decomposition["stages"]:
        status = s.get("status") or diagnosis.stage_status(s, decomposition["first_lost"])
        if s["passed"] is None:
            rows.append((s["stage"], status, "", "", s["measures"]))
            continue
        signed = s["stage"] != "sender"  # the probe's accuracy is a rate
        note = f"{s['measures']} (vs {s['reference']:.3f})" if s["stage"] == "sender" else s["measures"]
        if "p_holm" in s:
            note += f" (Holm p = {s['p_holm']:.2g} over {s['family']})"
        rows.append((s["stage"], fmt_estimate(s["value"], s["ci"], signed=signed), str(s["n"]), status, note))
    return rows


DECOMPOSITION_HEADER = ("stage", "value [95% CI]", "n", "status", "what it measures")
PER_KIND = (
    "(Δ vs baseline, 95% CI: two-level bootstrap; control of translated Δlog p: the mean vector in the same "
    "mode and α; marked: survives Holm in its family)"
)


def transfer_result(results: dict) -> Result:
    """The split protocol's run as a :class:`Result`: decomposition (and the sites side by side) first,
    then configuration, validity, site, fit, the condition per vector kind the verdict reads, and every
    condition (report.md, or ``--full``), each present section's tables in their slots
    (``sections.SLOTS``). Marks: cells that survive the Holm correction of their family
    (``diagnosis.family_of``)."""
    every = results["conditions"]
    decomposition = decomposition_rows(results["decomposition"])
    validity = validity_rows(results)
    slots = {slot: [] for slot in sections.SLOTS}
    for section in sections.present(results):
        for slot, table in section.tables(results):
            slots[slot].append(table)
    tables = [
        Table(
            f"Where is the signal lost? (first lost: {results['decomposition']['first_lost'] or 'none'})",
            DECOMPOSITION_HEADER,
            decomposition,
            alerts=[r[3] == "LOST here" for r in decomposition],
        ),
        *slots["sites"],
        Table("Configuration", ("setting", "value"), configuration_rows(results)),
        Table(
            "Task validity (held-out items, all seeds; rates with exact binomial 95% CIs)",
            ("measure", "value [95% CI]", "per seed / note"),
            validity,
            alerts=[r[0] == "task valid" and r[1] == "NO" for r in validity],
        ),
        Table(
            "Site diagnosis (before any effect)", ("measure", "value [95% CI]", "note"), site_rows(results)
        ),
        *slots["site"],
        Table(
            f"Bridge fit on held-out items (target: {results['bridge']['target']})",
            FIT_HEADER,
            bridge_rows(results["bridge"]),
        ),
        condition_table(
            f"Condition per vector kind {PER_KIND}",
            best_per_kind(every),
            every=every,
            family=diagnosis.family_of,
        ),
        condition_table(
            f"All {len(every)} conditions {PER_KIND}", every, in_terminal=False, family=diagnosis.family_of
        ),
        *slots["conditions"],
    ]
    parts = results.get("verdict_parts")
    label = diagnosis.verdict_label(results)
    return Result("transfer", diagnosis.HYPOTHESIS, label, results["verdict"], tables, results, parts)
