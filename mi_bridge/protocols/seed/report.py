"""A seed-protocol run as a :class:`~mi_bridge.report.result.Result` (rendered by ``report.py``): the protocol
audit first, then the configuration, the bridge fit, and one row per condition beside the published
table."""

from __future__ import annotations

import numpy as np

from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.protocols.seed.audit import NEAR_NULL
from mi_bridge.protocols.seed.experiment import CONDITIONS, PRIMARY_METRIC
from mi_bridge.report.render import ci_text, saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.stats import FAMILY_ALPHA, error_bars, helps_in_family

AUDIT_HEADER = ("check", "value", "reading")
STRENGTH_HEADER = ("condition", "‖new − h‖/‖h‖", "‖injected‖/‖h‖", "‖h‖", "flag")
FLOOR_HEADER = ("condition", "− zero replacement [95% CI]", "− same-norm random [95% CI]", "flag")
CONDITION_HEADER = (
    "condition",
    "runs",
    "n items",
    "boundary [95% CI]",
    "paper",
    "diff",
    "legacy [95% CI]",
    "paper",
    "diff",
    "norm. EM",
    "Δ boundary vs no injection [95% CI]",
)
FIT_HEADER = ("predictor", "seed", "L2 cos (paper's metric)", "L2 R²", "raw cos", "normalized cos")


def audit_rows(results: dict) -> list[tuple[str, str, str]]:
    audit = results["audit"]
    asym, validity = audit["information_asymmetry"], audit["validity"]
    at_floor = [name for name, f in audit["floor"].items() if f["at_floor"]]
    near_null = [name for name, s in audit["injection_strength"].items() if s["near_null"]]
    return [
        (
            "information asymmetry",
            f"identical inputs {asym['identical_inputs']:.0%}, sender-only tokens {asym['sender_only_tokens']:.0%}",
            "the sender sees something the receiver lacks"
            if asym["asymmetric"]
            else "NONE: the sender sees nothing the receiver lacks; no transfer of missing information can be tested",
        ),
        (
            "task validity (oracle − no injection)",
            f"{validity['gap']:+.3f} {ci_text(validity['ci'])}, n={validity['n']}",
            ("valid" if validity["valid"] else "NOT VALID: no effect below can be read")
            + f" (needs ≥ {validity['min_gap']} with CI above 0; oracle: {validity['oracle']})",
        ),
        (
            f"near-null injections (change < {NEAR_NULL:.0%} of ‖h‖)",
            ", ".join(near_null) or "none",
            "indistinguishable from no injection by construction" if near_null else "",
        ),
        (
            "at the floor (≈ zero or random replacement)",
            ", ".join(at_floor) or "none",
            "cannot tell an informative vector from noise" if at_floor else "",
        ),
    ]


def strength_rows(results: dict) -> list[tuple[str, ...]]:
    return [
        (
            name,
            f"{s['change']:.2e}",
            f"{s['vector']:.2e}",
            f"{s['state_norm']:.1f}",
            "near-null" if s["near_null"] else "",
        )
        for name, s in results["audit"]["injection_strength"].items()
    ]


def floor_rows(results: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, f in results["audit"]["floor"].items():
        cells = [f"{v['mean']:+.3f} {ci_text(v['ci'])}" for v in f["versus"].values()]
        rows.append((name, *cells, "at floor" if f["at_floor"] else ""))
    return rows


def condition_rows(results: dict) -> list[tuple[str, ...]]:
    rows = []
    for c in results["conditions"]:
        published = c.get("published", {})
        difference = c.get("difference", {})

        def cell(metric: str, c=c) -> str:
            return f"{c[metric]['mean']:.4f} {ci_text(c[metric]['ci'], 4)}"

        def paper(metric: str, published=published, difference=difference) -> tuple[str, str]:
            if metric not in published:
                return "", ""
            return f"{published[metric]:.4f}", f"{difference[metric]:+.4f}"

        delta = c["delta_boundary_contains"]
        rows.append(
            (
                c["name"],
                str(c["runs"]),
                str(c["n"]),
                cell("boundary_contains"),
                *paper("boundary_contains"),
                cell("legacy_contains"),
                *paper("legacy_contains"),
                f"{c['normalized_exact_match']['mean']:.4f}",
                f"{delta['mean']:+.4f} {ci_text(delta['ci'], 4)}",
            )
        )
    return rows


def fit_rows(results: dict) -> list[tuple[str, ...]]:
    fit = results["bridge_fit"]
    number = lambda d, k: f"{d[k]:.3f}" if k in d else "n/a"
    rows = [
        (
            kind,
            str(b["seed"]),
            *(number(b, k) for k in ("l2_cosine", "l2_r2", "raw_cosine", "normalized_cosine")),
        )
        for kind, entries in fit["bridges"].items()
        for b in entries
    ]
    trivial = fit["receiver_mean_direction"]
    rows.append(
        ("receiver-mean direction", "", number(trivial, "l2_cosine"), number(trivial, "l2_r2"), "", "")
    )
    return rows


def configuration_rows(results: dict) -> list[tuple[str, str]]:
    config, layers, models, fit = (
        results["config"],
        results["layers"],
        results["models"],
        results["bridge_fit"],
    )
    return [
        ("protocol", "seed (arXiv 2606.03280 as released)"),
        ("variant", results.get("variant", "every position")),
        ("sender → receiver", f"{models['sender']['name']} → {models['receiver']['name']}"),
        (
            "layers",
            f"{resid_post_name(layers['sender'])} → {resid_post_name(layers['receiver'])} (prefill)",
        ),
        ("items", f"{results['n_items']} of the 396 released (SHA-256 verified)"),
        (
            "bridge",
            f"{', '.join(fit['bridges'])}; seeds {', '.join(str(b['seed']) for b in next(iter(fit['bridges'].values())))}",
        ),
        (
            "fit corpus",
            f"{fit['corpus']}: {fit['n_texts']} texts, {fit['n_fit_pairs']} fit / {fit['n_heldout_pairs']} held-out position pairs",
        ),
        (
            "decoding",
            f"greedy, {config['max_new_tokens']} new tokens, repetition penalty 1.3, no repeated 3-grams",
        ),
    ]


def verdict(results: dict) -> str:
    audit = results["audit"]
    validity = audit["validity"]
    if not validity["valid"]:
        return (
            f"Task not valid: the oracle is {validity['gap']:+.3f} {ci_text(validity['ci'])} above no injection "
            f"(n={validity['n']}), short of {validity['min_gap']}. No effect in this table can be read as "
            "evidence for or against transfer."
        )
    lines = ["Task valid under the oracle (which restates the answer-bearing fact, so it holds the answer)."]
    if not audit["information_asymmetry"]["asymmetric"]:
        lines.append(
            "The sender reads exactly what the receiver reads, so no condition can show transfer of missing information."
        )
    at_floor = [n for n, f in audit["floor"].items() if f["at_floor"]]
    if at_floor:
        lines.append(
            f"At the floor (indistinguishable from zero or random replacement): {', '.join(at_floor)}."
        )
    near_null = [n for n, s in audit["injection_strength"].items() if s["near_null"]]
    if near_null:
        lines.append(
            f"Near-null injections (a null result is expected by construction): {', '.join(near_null)}."
        )
    helping = helping_translated(results)
    lines.append(
        f"Translated conditions that raise {PRIMARY_METRIC.replace('_', ' ')} after the Holm correction over "
        f"all of them (sign test, family-wise α = {FAMILY_ALPHA}): {', '.join(helping) or 'none'}."
    )
    return " ".join(lines)


HYPOTHESIS = (
    "Under the seed protocol, injecting the bridge's translated states helps the receiver answer "
    "(boundary contains; the published negative result says it does not)."
)


def helping_translated(results: dict) -> list[str]:
    """The translated conditions (not the shuffled control) that raise boundary contains with a CI above
    0 and a Holm-adjusted sign-test p below FAMILY_ALPHA over all of them."""
    translated = {c.name for c in CONDITIONS if c.vector == "translated"}
    family = [c for c in results["conditions"] if c["condition"] in translated]
    key = f"delta_{PRIMARY_METRIC}"
    # in the split run's summary shape, so that one function decides for both protocols
    summaries = [{key: c[key]["mean"], f"{key}_ci": c[key]["ci"], f"{key}_p": c[key]["p"]} for c in family]
    helping = helps_in_family(summaries, PRIMARY_METRIC)
    return [c["name"] for c, ok in zip(family, helping, strict=True) if ok]


def verdict_label(results: dict) -> str:
    """The split run's labels (``report.result.TRANSFER_VERDICTS``) on :data:`HYPOTHESIS`:
    ``untestable here`` where the task is not valid; ``transfer helps`` where a translated condition
    (not the shuffled control) raises boundary contains, after the Holm correction over all of them (see
    :func:`helping_translated`); where none does, ``no transfer`` only if the sender reads something the
    receiver does not. The released protocol gives both models the same prompt, so its null is expected
    by construction: ``untestable here``."""
    audit = results["audit"]
    if not audit["validity"]["valid"]:
        return "untestable here"
    if helping_translated(results):
        return "transfer helps"
    return "no transfer" if audit["information_asymmetry"]["asymmetric"] else "untestable here"


def seed_result(results: dict) -> Result:
    """The seed protocol's run as a :class:`Result`: the audit first, then configuration, fit and the
    conditions beside the published table."""
    tables = [
        Table("Protocol audit (before any effect)", AUDIT_HEADER, audit_rows(results)),
        Table(
            "Injection strength (receiver layer, prompt positions)", STRENGTH_HEADER, strength_rows(results)
        ),
        Table("Floor equivalence (boundary contains, paired)", FLOOR_HEADER, floor_rows(results)),
        Table("Configuration", ("setting", "value"), configuration_rows(results)),
        Table("Bridge fit (held-out last 10% of the fit pairs)", FIT_HEADER, fit_rows(results)),
        Table(
            "Conditions beside the published table (mean over runs; n items, each averaged over the runs)",
            CONDITION_HEADER,
            condition_rows(results),
        ),
    ]
    explanation = f"{verdict(results)} Published numbers: {results['published_source']}"
    return Result(
        "transfer (seed protocol)", HYPOTHESIS, verdict_label(results), explanation, tables, results
    )


def conditions_figure(results: dict, path) -> None:
    """Boundary contains per condition with its 95% CI, and the published number beside it."""
    conditions = results["conditions"]
    names = [c["name"] for c in conditions]
    means = [c[PRIMARY_METRIC]["mean"] for c in conditions]
    cis = [c[PRIMARY_METRIC]["ci"] for c in conditions]
    y = np.arange(len(conditions))
    with saved_figure(path, figsize=(7, 0.35 * len(conditions) + 1.2)) as (fig, ax):
        ax.errorbar(means, y, xerr=error_bars(means, cis), fmt="o", label="this run (95% CI)")
        paper = [(i, c["published"][PRIMARY_METRIC]) for i, c in enumerate(conditions) if "published" in c]
        if paper:
            ax.plot([v for _, v in paper], [i for i, _ in paper], "kx", label="published")
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("boundary contains")
        ax.legend(fontsize=8)
