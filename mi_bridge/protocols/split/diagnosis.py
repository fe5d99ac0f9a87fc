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

from mi_bridge.stats import fmt_delta, fmt_rate, helps, helps_in_family, holm, survives_as_strongest

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
    (
        "site",
        "context-free ceiling: context-free self-patch replace (Δ accuracy); passes at a pre-lookup site",
    ),
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
        f"in {SITE_MODE} mode: self-patch {fmt_delta(self_patch)}, context-free {fmt_delta(context_free)}, "
        f"follow rate {fmt_rate(follow_rate)}"
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


def ceiling(conditions: Sequence[dict]) -> dict | None:
    """The one context-free ceiling of a run: the context-free self-patch in SITE_MODE (replace), the
    test that classes the site. One pre-specified condition, not the best of its modes by mean, so the
    decomposition, the site diagnosis and the verdict quote the same number (docs/DESIGN.md)."""
    name = site_condition_name("context-free self-patch")
    return next((c for c in conditions if c["name"] == name), None)


def ceiling_survives(conditions: Sequence[dict]) -> bool:
    """Could the run have shown a help? Only if the context-free ceiling (the test that makes a site
    pre-lookup) would itself survive the Holm correction as the strongest member of the translated
    family: p × N < FAMILY_ALPHA. A translated condition as good as the ceiling then would."""
    reference = ceiling(conditions)
    if reference is None:  # without the control, nothing shows that a help was detectable
        return False
    return survives_as_strongest(reference, len(of_vector(conditions, "translated")))


def decomposition(
    validity: dict,
    conditions: Sequence[dict],
    sender_probe: dict,
    usability: dict | None = None,
    site_class: str | None = None,
) -> dict:
    """One row per stage (task, site, sender, translation, usability), the first stage that fails, and
    each stage's status (:func:`stage_status`).

    The site stage reads the context-free ceiling (:func:`ceiling`); with ``site_class`` it passes
    exactly at a pre-lookup site, so that a ceiling whose CI clears 0 next to a high follow rate does not
    move the blame on to the translation.
    """
    reference, translated = ceiling(conditions), best_translated(conditions)
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
            "n": reference["n"],
            "reference": 0.0,
            "condition": "oracle",
            "passed": validity["valid"],
        },
        "site": {
            **delta_row(reference),
            "passed": helps(reference) if site_class is None else site_class == "pre-lookup",
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
    for s in stages:
        s["status"] = stage_status(s, lost)
    return {"stages": stages, "first_lost": lost}


def stage_status(stage: dict, lost: str | None) -> str:
    """``passes``, ``LOST here`` (the first stage that fails), ``not testable here`` (a later stage that
    fails: the signal was already gone before it, so its failure says nothing) or ``not run``."""
    if stage["passed"] is None:
        return "not run"
    if stage["stage"] == lost:
        return "LOST here"
    return "passes" if stage["passed"] else "not testable here"


def pre_lookup_layers(site_scan: Sequence[dict]) -> list[int]:
    return [row["layer"] for row in site_scan if row["class"] == "pre-lookup"]


SECOND_SITE_RULE = (
    "the pre-lookup receiver layer nearest the requested one (ties: the larger context-free ceiling, "
    "then the lower layer)"
)


def second_site_layer(site_scan: Sequence[dict], requested: int) -> int | None:
    """Where the run also evaluates its translated conditions (:data:`SECOND_SITE_RULE`): None when the
    requested layer is pre-lookup itself, was not scanned, or no scanned layer is pre-lookup."""
    rows = {row["layer"]: row for row in site_scan}
    if requested not in rows or rows[requested]["class"] == "pre-lookup":
        return None
    candidates = [row for row in site_scan if row["class"] == "pre-lookup"]
    if not candidates:
        return None
    nearest = min(
        candidates, key=lambda r: (abs(r["layer"] - requested), -r["context_free"]["mean"], r["layer"])
    )
    return nearest["layer"]


MATCHED_CONTROL = "mean"
"""The control a translated condition's Δ log p is judged against: the item-free mean translated vector
in the same mode and α. log p(C) rises under almost any perturbation of this size while accuracy does
not move, so only the excess over this control speaks for the translated vectors' content."""


def matched_control_name(name: str) -> str:
    """``translated rescale-add a=1`` → ``mean rescale-add a=1``."""
    return name.replace("translated", MATCHED_CONTROL, 1)


CONTROL_KINDS = ("random", "shuffled", "mean")


def family_of(summary: dict) -> str | None:
    """The Holm family a condition is marked in (per metric): the prompts, the translated conditions,
    their controls (random, shuffled, mean), or the site controls (self-patch and its variants). The
    baseline is the reference, in no family."""
    vector = summary["vector"]
    if vector is None:
        return None if summary["name"] == "baseline" else "prompts"
    if vector == "translated":
        return "translated"
    return "controls" if vector in CONTROL_KINDS else "site controls"


HYPOTHESIS = (
    "Injecting the bridge's translated states helps the receiver answer, at a site where a vector from "
    "the sender could (the published negative result says it does not)."
)
LABELS = ("transfer helps", "no transfer", "untestable here")
"""The transfer experiment's verdicts on :data:`HYPOTHESIS` (``report.result.VERDICTS``)."""


def transfer_label(valid: bool, conditions: Sequence[dict], site_class: str) -> str:
    """``transfer helps`` where a translated condition helps (Δ accuracy CI above 0, and Holm-adjusted
    sign-test p < FAMILY_ALPHA over all translated conditions, since the best is chosen among them);
    ``no transfer`` where none does, at a valid task and a pre-lookup site whose context-free ceiling
    would itself pass that bar (:func:`ceiling_survives`: the run could have shown a help);
    ``untestable here`` otherwise: the task is not valid, no sender vector can help at this site, or
    the run lacks the power to show a help."""
    if not valid:
        return "untestable here"
    if surviving_translated(conditions):
        return "transfer helps"
    testable = site_class == "pre-lookup" and ceiling_survives(conditions)
    return "no transfer" if testable else "untestable here"


def verdict_label(results: dict) -> str:
    """The run's label at its requested site (:func:`transfer_label`)."""
    return transfer_label(results["validity"]["valid"], results["conditions"], results["site"]["class"])
