"""Where the signal is lost: the injection site's class, the failure decomposition and the verdict.

Pure functions over condition summaries (docs/DESIGN.md, "Site diagnosis"). Self-patch alone is no
ceiling for a sender: once the receiver has looked the answer up in its own context, its state at the
site carries the answer C, which the sender never sees. Two controls separate the cases:

- ``counterfactual self-patch``: the receiver's state from its oracle prompt with the C's permuted among
  the facts. Its *follow rate* (share of items answered with the permuted C) says whether the state
  carries the answer.
- ``context-free self-patch``: its state for B read against another item's facts (no B there). It carries
  B without this item's answer: the best any vector computed from the sender could do.
"""

from __future__ import annotations

from collections.abc import Sequence

from mi_bridge.stats import (
    FAMILY_ALPHA,
    fmt_ci,
    fmt_delta,
    helps,
    helps_in_family,
    holm,
    survives_as_strongest,
)

SITE_CLASSES = ("pre-lookup", "post-lookup", "inert", "undetermined")
SITE_MODE = "replace"
"""Sites are classified by replacement: what the injected state carries on its own."""
CEILING_SHARE = 0.5
"""A site is pre-lookup when the context-free ceiling reaches at least this share of self-patch."""
FOLLOW_MAJORITY = 0.5
"""A site is post-lookup when the counterfactual state makes most items answer the permuted C."""
SITE_KINDS = ("self-patch", "counterfactual self-patch", "context-free self-patch")
STAGES = (
    ("task", "oracle − baseline (Δ accuracy)"),
    ("site", "context-free ceiling: best context-free self-patch (Δ accuracy); passes at a pre-lookup site"),
    ("sender", "B decodable from the sender state: held-out k-way accuracy of a linear probe"),
    ("translation", "best translated-vector condition (Δ accuracy); passes if it survives Holm over all"),
    ("usability", "usability-trained bridge (Δ accuracy)"),
)


def site_condition_name(kind: str) -> str:
    return f"{kind} {SITE_MODE}"


def classify_site(self_patch: dict, context_free: dict, follow_rate: dict) -> str:
    """One of SITE_CLASSES from the replace-mode summaries and the counterfactual follow rate."""
    if not helps(self_patch):
        return "inert"  # even the receiver's own oracle state changes nothing: nothing reads the site
    if helps(context_free) and context_free["delta_accuracy"] >= CEILING_SHARE * self_patch["delta_accuracy"]:
        return "pre-lookup"
    if follow_rate["mean"] >= FOLLOW_MAJORITY:
        return "post-lookup"
    return "undetermined"


def site_section(by_name: dict[str, dict], layer: int) -> dict:
    """results.json's ``site``: the three replace-mode controls, the follow rate and the class."""
    self_patch, counterfactual, context_free = (by_name[site_condition_name(k)] for k in SITE_KINDS)
    delta = lambda s: {"mean": s["delta_accuracy"], "ci": s["delta_accuracy_ci"], "n": s["n"]}
    site_class = classify_site(self_patch, context_free, counterfactual["follow_rate"])
    return {
        "layer": layer,
        "mode": SITE_MODE,
        "class": site_class,
        "self_patch": delta(self_patch),
        "context_free": delta(context_free),
        "counterfactual": delta(counterfactual),
        "follow_rate": counterfactual["follow_rate"],
        "explanation": explain_site(site_class, self_patch, context_free, counterfactual["follow_rate"]),
    }


def explain_site(site_class: str, self_patch: dict, context_free: dict, follow_rate: dict) -> str:
    numbers = (
        # the class is read in replace mode; the ceiling quoted later is the best mode, hence the label
        f"in {SITE_MODE} mode: self-patch {fmt_delta(self_patch)}, context-free {fmt_delta(context_free)}, "
        f"follow rate {follow_rate['mean']:.3f} {fmt_ci(follow_rate['ci'])}"
    )
    return {
        "pre-lookup": f"B alone works here ({numbers}): a sender-derived vector could help at this site.",
        "post-lookup": (
            f"The receiver's own state here carries the answer it looked up, not B ({numbers}): "
            "self-patch smuggles the answer, and no vector from the sender can help at this site."
        ),
        "inert": f"Nothing downstream reads this site ({numbers}): no injected vector can help here.",
        "undetermined": (
            f"Self-patch works but neither B alone nor the answer explains it ({numbers}): "
            "the state carries other item-specific content."
        ),
    }[site_class]


def of_vector(summaries: Sequence[dict], vector: str) -> list[dict]:
    """The conditions of one vector kind (a family, for the Holm correction), in order."""
    return [s for s in summaries if s["vector"] == vector]


def best(summaries: Sequence[dict], vector: str) -> dict | None:
    """The condition of one vector kind with the highest Δ accuracy (None if there is none)."""
    chosen = of_vector(summaries, vector)
    return max(chosen, key=lambda s: s["delta_accuracy"]) if chosen else None


def holm_p(summary: dict, conditions: Sequence[dict]) -> float:
    """``summary``'s sign-test p for Δ accuracy, Holm-adjusted over its family: every condition of its
    vector kind. Choosing the best of a family by its mean is then no longer a free look."""
    family = of_vector(conditions, summary["vector"])
    adjusted = holm([c["delta_accuracy_p"] for c in family])
    return adjusted[[c["name"] for c in family].index(summary["name"])]


def surviving_translated(conditions: Sequence[dict]) -> list[dict]:
    """The translated conditions that help: CI above 0 and Holm-adjusted sign-test p < FAMILY_ALPHA over
    all translated conditions (the best is chosen among them, so its own CI is no evidence)."""
    family = of_vector(conditions, "translated")
    return [c for c, ok in zip(family, helps_in_family(family), strict=True) if ok]


def best_translated(conditions: Sequence[dict]) -> dict:
    """The translated condition the translation stage reads: the best (by Δ accuracy) of those that
    survive the Holm correction, or else the best of all of them."""
    return best(surviving_translated(conditions), "translated") or best(conditions, "translated")


def ceiling_survives(conditions: Sequence[dict]) -> bool:
    """Could the run have shown a help? Only if the replace-mode context-free ceiling (the test that
    makes a site pre-lookup) would itself survive the Holm correction as the strongest member of the
    translated family: p × N < FAMILY_ALPHA. A translated condition as good as the ceiling then would."""
    name = site_condition_name("context-free self-patch")
    ceiling = next((c for c in conditions if c["name"] == name), None)
    if ceiling is None:  # without the control, nothing shows that a help was detectable
        return False
    return survives_as_strongest(ceiling, len(of_vector(conditions, "translated")))


def decomposition(
    validity: dict,
    conditions: Sequence[dict],
    sender_probe: dict,
    usability: dict | None = None,
    site_class: str | None = None,
) -> dict:
    """One row per stage (task, site, sender, translation, usability) and the first stage that fails.

    With ``site_class``, the site stage passes exactly at a pre-lookup site: its value is the best of
    several context-free modes, chosen without correction, and one of them clearing 0 by chance at a
    post-lookup site must not move the blame on to the translation (nor one with a wide CI keep it
    off the translation at a pre-lookup site).
    """
    ceiling, translated = best(conditions, "context-free self-patch"), best_translated(conditions)
    delta_row = lambda s: {
        "value": s["delta_accuracy"],
        "ci": s["delta_accuracy_ci"],
        "n": s["n"],
        "reference": 0.0,
        "condition": s["name"],
        "passed": helps(s),
    }
    rows = {
        "task": {
            "value": validity["oracle_gap"]["mean"],
            "ci": validity["oracle_gap"]["ci"],
            "n": ceiling["n"],
            "reference": 0.0,
            "condition": "oracle",
            "passed": validity["valid"],
        },
        "site": {
            **delta_row(ceiling),
            # a pre-lookup site is one whose replace-mode ceiling helps, whichever mode has the best mean
            "passed": helps(ceiling) if site_class is None else site_class == "pre-lookup",
        },
        "sender": {
            "value": sender_probe["mean"],
            "ci": sender_probe["ci"],
            "n": sender_probe["n"],
            "reference": validity["chance"],
            "condition": "linear probe (k-way)",
            "passed": bool(sender_probe["ci"][0] > validity["chance"]),
        },
        "translation": {
            **delta_row(translated),
            "p_holm": holm_p(translated, conditions),
            "family": len(of_vector(conditions, "translated")),
            "passed": bool(surviving_translated(conditions)),
        },
        "usability": None if usability is None else delta_row(usability),
    }
    stages = [{"stage": name, "measures": text, **(rows[name] or {"passed": None})} for name, text in STAGES]
    lost = next((s["stage"] for s in stages if s["passed"] is False), None)
    return {"stages": stages, "first_lost": lost}


def pre_lookup_layers(site_scan: Sequence[dict]) -> list[int]:
    return [row["layer"] for row in site_scan if row["class"] == "pre-lookup"]


HYPOTHESIS = (
    "The published negative result: injecting the bridge's translated states does not help the receiver "
    "answer, at a site where a vector from the sender could."
)


def verdict_label(results: dict) -> str:
    """The run's verdict on :data:`HYPOTHESIS`, read from the decomposition's translation stage:
    ``not supported`` where a translated condition helps (Δ accuracy CI above 0, and Holm-adjusted
    sign-test p < FAMILY_ALPHA over all translated conditions, since the best is chosen among them);
    ``supported`` where none does, at a valid task and a pre-lookup site whose context-free ceiling
    would itself pass that bar (:func:`ceiling_survives`, so the run could have shown a help);
    ``inconclusive`` otherwise: the task is not valid, no sender vector could help at this site, or
    the run lacks the power to show a help."""
    conditions = results["conditions"]
    if not results["validity"]["valid"]:
        return "inconclusive"
    if surviving_translated(conditions):
        return "not supported"
    pre_lookup = results["site"]["class"] == "pre-lookup"
    return "supported" if pre_lookup and ceiling_survives(conditions) else "inconclusive"


def verdict(results: dict) -> str:
    """One paragraph: where the signal is lost, with the numbers behind it, and what cannot be said."""
    validity, site, bridge = results["validity"], results["site"], results["bridge"]
    stages = {s["stage"]: s for s in results["decomposition"]["stages"]}
    lost = results["decomposition"]["first_lost"]
    by_name = {c["name"]: c for c in results["conditions"]}
    conditions = results["conditions"]
    row = lambda s: f"{s['value']:+.3f} {fmt_ci(s['ci'])}"
    if not validity["valid"]:
        gap = validity["oracle_gap"]
        return (
            f"Task not valid, no conclusion: the receiver's oracle accuracy "
            f"({validity['receiver_oracle_accuracy']['mean']:.3f}) is not clearly above its baseline "
            f"({validity['baseline_accuracy']['mean']:.3f}; gap {gap['mean']:+.3f}, 95% CI "
            f"{fmt_ci(gap['ci'])}, required >= {validity['min_oracle_gap']}). The receiver cannot use the "
            "bridge entity even when it is written in the slot, so injected states cannot be judged here."
        )
    translated = best_translated(conditions)
    n_helps = sum(helps(c) for c in of_vector(conditions, "translated"))
    n_corrected = len(surviving_translated(conditions))
    n_total = len(of_vector(conditions, "translated"))
    parts = [f"Site: {site['class']} at receiver layer {site['layer']}. {site['explanation']}"]
    known = pre_lookup_layers(results.get("site_scan", []))
    if site["class"] != "pre-lookup":
        if known:
            parts.append(f"Pre-lookup receiver layers of this pair: {', '.join(map(str, known))}.")
        elif results.get("site_scan"):
            parts.append("No receiver layer of this pair is pre-lookup at this position.")
    parts.append(
        f"The bridge reaches normalized cosine {bridge['normalized_cosine']['mean']:.3f} on held-out items "
        f"(centered {bridge['centered_cosine']['mean']:.3f}; the receiver-mean predictor has raw cosine "
        f"{bridge['trivial_predictors']['receiver_mean']['raw_cosine']['mean']:.3f} against the bridge's "
        f"{bridge['raw_cosine']['mean']:.3f})."
    )
    parts.append(
        f"{n_helps} of {n_total} translated-vector conditions raise accuracy with a CI above 0 "
        f"({n_corrected} after the Holm correction over the {n_total}, sign test, family-wise "
        f"α = {FAMILY_ALPHA}); the best{' surviving' if n_corrected else ''} is '{translated['name']}' "
        f"{fmt_delta(translated)}, "
        f"Holm p = {holm_p(translated, conditions):.2g}, against a context-free ceiling of "
        f"{row(stages['site'])} ('{stages['site']['condition']}')."
    )
    if lost == "site":
        if helps(ceiling := best(conditions, "context-free self-patch")):
            n_ceilings = len(of_vector(conditions, "context-free self-patch"))
            parts.append(
                f"The best of {n_ceilings} context-free conditions ('{ceiling['name']}') "
                f"clears 0, chosen by its mean without correction for that choice, but the site is "
                f"{site['class']} by its replace-mode test."
            )
        if n_corrected:
            parts.append(
                f"Yet '{translated['name']}' helps ({fmt_delta(translated)}, after the Holm correction): "
                "at this site a sender vector does reach the answer in that mode, so the replace-mode class "
                "does not bound it."
            )
        else:
            parts.append(
                "The signal is lost at the site: no vector computed from the sender can help here, so this "
                "run says nothing about the translation. Inject at a pre-lookup layer to test it."
            )
    elif lost == "sender" and stages["translation"]["passed"]:
        parts.append(
            f"A linear probe reads B from the sender state at only {row(stages['sender'])} (chance "
            f"{validity['chance']:.3f}), yet '{translated['name']}' helps after the Holm correction: the "
            "bridge uses something in the sender state that the probe does not read."
        )
    elif lost == "sender":
        parts.append(
            f"The signal is lost at the sender: a linear probe reads B from its state at only "
            f"{row(stages['sender'])} (chance {validity['chance']:.3f}). Try a later sender layer."
        )
    elif lost == "translation":
        parts.append(
            f"The sender carries B (probe {row(stages['sender'])}) but the translation loses it. "
            "At this pre-lookup site the failure lies in the translation."
        )
    elif lost is None:
        share = stages["translation"]["value"] / stages["site"]["value"]
        parts.append(
            f"The signal survives every stage measured: the best translated condition closes {share:.0%} of "
            "the gap between the baseline and the context-free ceiling."
        )
    if site["class"] == "pre-lookup" and not n_corrected and not ceiling_survives(conditions):
        parts.append(
            f"The replace-mode context-free ceiling itself would not survive the Holm correction over the "
            f"{n_total} translated conditions, so this run lacks the power to show a help: the label is "
            "inconclusive. Use more items or fewer conditions."
        )
    relay = by_name["text relay"]
    parts.append(
        f"The text relay changes accuracy by {fmt_delta(relay)} (n={relay['n']} items over all seeds)."
    )
    return " ".join(parts)
