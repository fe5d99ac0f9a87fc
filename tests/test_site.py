"""Site diagnosis: the counterfactual and context-free prompts, the site classes, the decomposition."""

import pytest
import torch

from mi_bridge.models.language import pythia_language, toy_language
from mi_bridge.models.task import sample_items
from mi_bridge.protocols.split import diagnosis


def languages(neox_tokenizer):
    return [toy_language(), pythia_language(neox_tokenizer)]


def fact_layout(items):
    """Start of each receiver fact and the offsets of B and C inside it."""
    language = items.language
    fact_length = len(language.render(language.receiver_fact, {"B": 0, "C": 0}))
    offsets = {
        field: len(language.render(language.receiver_fact[: language.receiver_fact.index(field)], {"B": 0}))
        for field in ("B", "C")
    }
    starts = [1 + q * fact_length for q in range(items.k)]
    return starts, offsets


@pytest.mark.parametrize("k", [2, 4, 6])
def test_counterfactual_prompt_permutes_only_the_answers(neox_tokenizer, k):
    for language in languages(neox_tokenizer):
        items = sample_items(language, k=k, n_items=40, seed=3)
        oracle, counterfactual = items.oracle_tokens, items.counterfactual_tokens
        starts, offsets = fact_layout(items)
        c_positions = torch.tensor([s + offsets["C"] for s in starts])
        differs = (oracle != counterfactual).any(0)
        assert not differs[~torch.isin(torch.arange(oracle.shape[1]), c_positions)].any()
        for i in range(items.n_items):
            original, permuted = oracle[i, c_positions], counterfactual[i, c_positions]
            assert sorted(original.tolist()) == sorted(permuted.tolist())  # a permutation of the C's
            assert (original != permuted).all()  # cyclic: no fact keeps its C
            # gold B's fact now holds the C named by follow_index, which is not the gold answer
            b_positions = torch.tensor([s + offsets["B"] for s in starts])
            q = int((oracle[i, b_positions] == items.bridge_ids[i]).nonzero()[0, 0])
            assert permuted[q] == items.answer_candidates[i, items.follow_index[i]]
            assert items.follow_index[i] != items.gold_index[i]


def test_context_free_prompt_never_contains_b_in_its_facts(neox_tokenizer):
    for language in languages(neox_tokenizer):
        items = sample_items(language, k=4, n_items=60, seed=5)
        starts, _ = fact_layout(items)
        query_start = starts[-1] + (starts[1] - starts[0])  # after <bos> and the k facts
        facts = items.context_free_tokens[:, :query_start]
        for i in range(items.n_items):
            assert items.bridge_ids[i] not in facts[i].tolist()
        # the query is the oracle's: B in the slot, same tokens after the facts
        assert torch.equal(items.context_free_tokens[:, query_start:], items.oracle_tokens[:, query_start:])
        assert torch.equal(items.context_free_tokens[:, items.slot_position], items.bridge_ids)
        # the facts are another item's (a real context, not noise)
        oracle_facts = {tuple(row) for row in items.oracle_tokens[:, :query_start].tolist()}
        assert all(tuple(row) in oracle_facts for row in facts.tolist())


def test_new_prompts_leave_the_existing_items_unchanged():
    """Adding the prompts drew no extra random numbers: items of a seed are those of earlier versions."""
    items = sample_items(toy_language(), k=4, n_items=5, seed=0)
    decoded = toy_language().decode(items.oracle_tokens[0].tolist())
    assert decoded == "<bos> p13 lives c16 . p1 lives c21 . p11 lives c18 . p26 lives c17 . ? p1 lives"


def summary(
    delta: float,
    low: float,
    high: float,
    name: str = "x",
    vector: str = "v",
    n: int = 100,
    p: float | None = None,
) -> dict:
    """A condition summary; its sign-test p agrees with its CI unless given."""
    p = (0.001 if low > 0 or high < 0 else 0.5) if p is None else p
    return {
        "name": name,
        "vector": vector,
        "delta_accuracy": delta,
        "delta_accuracy_ci": [low, high],
        "delta_accuracy_p": p,
        "n": n,
    }


def follow(rate: float) -> dict:
    return {"mean": rate, "ci": [rate - 0.02, rate + 0.02], "n": 100}


@pytest.mark.parametrize(
    "self_patch, context_free, follow_rate, expected",
    [
        (summary(0.75, 0.72, 0.78), summary(0.74, 0.71, 0.77), follow(0.0), "pre-lookup"),
        (summary(0.75, 0.72, 0.78), summary(0.01, -0.02, 0.04), follow(0.99), "post-lookup"),
        (summary(0.01, -0.02, 0.04), summary(0.00, -0.03, 0.03), follow(0.25), "inert"),
        (summary(0.75, 0.72, 0.78), summary(0.10, 0.07, 0.13), follow(0.10), "undetermined"),
        # context-free helps but below half of self-patch, and the answer is carried: post-lookup
        (summary(0.75, 0.72, 0.78), summary(0.20, 0.17, 0.23), follow(0.80), "post-lookup"),
    ],
)
def test_site_classes_follow_from_planted_cases(self_patch, context_free, follow_rate, expected):
    assert diagnosis.classify_site(self_patch, context_free, follow_rate) == expected


def planted_results(context_free: dict, probe_low: float, translated: dict, valid: bool = True) -> dict:
    conditions = [
        {**context_free, "name": "context-free self-patch replace", "vector": "context-free self-patch"},
        {**translated, "name": "translated replace", "vector": "translated"},
    ]
    validity = {"oracle_gap": {"mean": 0.7, "ci": [0.68, 0.72]}, "valid": valid, "chance": 0.25}
    probe = {"mean": probe_low + 0.02, "ci": [probe_low, probe_low + 0.04], "n": 100}
    return diagnosis.decomposition(validity, conditions, probe)


@pytest.mark.parametrize(
    "context_free, probe_low, translated, valid, lost",
    [
        (summary(0.7, 0.6, 0.8), 0.9, summary(0.5, 0.4, 0.6), False, "task"),
        (summary(0.0, -0.1, 0.1), 0.9, summary(0.0, -0.1, 0.1), True, "site"),
        (summary(0.7, 0.6, 0.8), 0.20, summary(0.0, -0.1, 0.1), True, "sender"),
        (summary(0.7, 0.6, 0.8), 0.9, summary(0.0, -0.1, 0.1), True, "translation"),
        (summary(0.7, 0.6, 0.8), 0.9, summary(0.5, 0.4, 0.6), True, None),
    ],
)
def test_decomposition_names_the_first_stage_that_fails(context_free, probe_low, translated, valid, lost):
    result = planted_results(context_free, probe_low, translated, valid)
    assert result["first_lost"] == lost
    assert [s["stage"] for s in result["stages"]] == [name for name, _ in diagnosis.STAGES]
    assert result["stages"][-1]["passed"] is None  # usability: not run here


def test_the_runs_verdict_label_follows_validity_help_and_site():
    """The transfer experiment's verdict on the published negative result: withheld where the task is
    not valid or the site admits no sender vector; refuted by any translated condition that helps."""
    from mi_bridge.protocols.split.diagnosis import verdict_label

    def results(valid: bool, site: str, translated_ci: tuple[float, float]) -> dict:
        low, high = translated_ci
        translated = summary((low + high) / 2, low, high, name="translated", vector="translated")
        ceiling = summary(
            0.5, 0.4, 0.6, name="context-free self-patch replace", vector="context-free self-patch"
        )
        return {"validity": {"valid": valid}, "site": {"class": site}, "conditions": [ceiling, translated]}

    assert verdict_label(results(False, "pre-lookup", (0.1, 0.2))) == "inconclusive"
    assert verdict_label(results(True, "pre-lookup", (0.1, 0.2))) == "not supported"
    assert verdict_label(results(True, "post-lookup", (0.1, 0.2))) == "not supported"
    assert verdict_label(results(True, "pre-lookup", (-0.1, 0.1))) == "supported"
    for site in ("post-lookup", "inert", "undetermined"):
        assert verdict_label(results(True, site, (-0.1, 0.1))) == "inconclusive"


def planted_verdict(site_class: str, translated: dict) -> tuple[dict, str]:
    """The decomposition and verdict of a run at a planted site class whose best context-free mode
    clears 0 (as one of several modes can by chance at a post-lookup site)."""
    context_free = summary(0.05, 0.01, 0.09)
    conditions = [
        {**context_free, "name": "context-free self-patch add a=1", "vector": "context-free self-patch"},
        {
            **summary(0.04, 0.005, 0.075),
            "name": "context-free self-patch replace",
            "vector": "context-free self-patch",
        },
        {**translated, "name": "translated replace", "vector": "translated"},
    ]
    results = planted_run_results(site_class, conditions, probe_low=0.93)
    return results["decomposition"], diagnosis.verdict(results)


def planted_run_results(site_class: str, conditions: list[dict], probe_low: float) -> dict:
    """results.json's sections that the decomposition, the verdict and the label read, for a valid task
    at a planted site class (the text relay is added)."""
    conditions = [*conditions, {**summary(0.7, 0.68, 0.72), "name": "text relay", "vector": "text relay"}]
    validity = {"oracle_gap": {"mean": 0.7, "ci": [0.68, 0.72]}, "valid": True, "chance": 0.25}
    probe = {"mean": probe_low + 0.02, "ci": [probe_low, probe_low + 0.04], "n": 100}
    cosine = {"mean": 0.9}
    return {
        "validity": validity,
        "site": {"class": site_class, "layer": 1, "explanation": "(planted)"},
        "bridge": {
            "normalized_cosine": cosine,
            "centered_cosine": cosine,
            "raw_cosine": cosine,
            "trivial_predictors": {"receiver_mean": {"raw_cosine": cosine}},
        },
        "conditions": conditions,
        "decomposition": diagnosis.decomposition(validity, conditions, probe, site_class=site_class),
    }


@pytest.mark.parametrize("site_class", ["pre-lookup", "post-lookup", "inert", "undetermined"])
def test_the_translation_is_blamed_only_at_a_pre_lookup_site(site_class):
    """A context-free mode that clears 0 by chance at a post-lookup site would pass a site stage read
    from the best mode alone; the site class keeps the blame off the translation there."""
    decomposition, text = planted_verdict(site_class, translated=summary(0.0, -0.03, 0.03))
    pre_lookup = site_class == "pre-lookup"
    assert decomposition["first_lost"] == ("translation" if pre_lookup else "site")
    assert ("the translation loses it" in text) == pre_lookup
    assert ("says nothing about the translation" in text) == (not pre_lookup)
    if not pre_lookup:
        assert "without correction for that choice" in text


def test_a_translated_vector_that_helps_off_a_pre_lookup_site_is_reported_not_denied():
    decomposition, text = planted_verdict("post-lookup", translated=summary(0.1, 0.06, 0.14))
    assert decomposition["first_lost"] == "site"
    assert "no vector computed from the sender can help here" not in text
    assert "'translated replace' helps" in text


def family_results(best_p: float, n_family: int = 10, ceiling_p: float = 0.001, extra: tuple = ()) -> dict:
    """A valid run at a pre-lookup site whose best of ``n_family`` translated conditions has its CI
    above 0 and sign-test p ``best_p``; the others show nothing."""
    translated = [summary(0.08, 0.01, 0.15, name="translated 0", vector="translated", p=best_p)] + [
        summary(0.0, -0.05, 0.05, name=f"translated {i}", vector="translated") for i in range(1, n_family)
    ]
    translated = [*translated[: n_family - len(extra)], *extra]
    context_free = summary(
        0.5, 0.45, 0.55, name="context-free self-patch replace", vector="context-free self-patch", p=ceiling_p
    )
    return {
        "validity": {"oracle_gap": {"mean": 0.7, "ci": [0.68, 0.72]}, "valid": True, "chance": 0.25},
        "site": {"class": "pre-lookup"},
        "conditions": [context_free, *translated],
    }


@pytest.mark.parametrize("best_p, label", [(0.02, "supported"), (0.004, "not supported")])
def test_the_best_of_a_family_must_survive_the_holm_correction(best_p, label):
    """Chosen as the best of 10, a condition whose own CI clears 0 at p = 0.02 is no evidence (Holm
    p = 0.2); at p = 0.004 (Holm p = 0.04) it is."""
    results = family_results(best_p)
    assert diagnosis.holm_p(results["conditions"][1], results["conditions"]) == pytest.approx(10 * best_p)
    assert diagnosis.verdict_label(results) == label
    probe = {"mean": 0.95, "ci": [0.93, 0.97], "n": 100}
    stages = diagnosis.decomposition(
        results["validity"], results["conditions"], probe, site_class="pre-lookup"
    )
    assert stages["first_lost"] == ("translation" if label == "supported" else None)


def test_the_stage_reads_a_surviving_condition_when_the_best_by_mean_does_not_survive():
    """The best mean (+0.08, p = 0.057) fails Holm; a smaller, cleaner effect (+0.05, p = 6e-5) passes:
    the stage, the label and the verdict's count must all say that a translated condition helps."""
    clean = summary(0.05, 0.03, 0.07, name="translated clean", vector="translated", p=6e-5)
    results = family_results(0.057, extra=(clean,))
    probe = {"mean": 0.95, "ci": [0.93, 0.97], "n": 100}
    stages = diagnosis.decomposition(
        results["validity"], results["conditions"], probe, site_class="pre-lookup"
    )
    translation = next(s for s in stages["stages"] if s["stage"] == "translation")
    assert translation["condition"] == "translated clean" and translation["passed"]
    assert stages["first_lost"] is None
    assert diagnosis.verdict_label(results) == "not supported"


def test_without_the_power_to_show_a_help_the_label_is_inconclusive():
    """At p = 0.01 the ceiling clears its own CI but would not survive Holm over 10 (0.1): a translated
    condition as good as the ceiling would fail, so its absence says nothing."""
    assert diagnosis.verdict_label(family_results(0.5, ceiling_p=0.001)) == "supported"
    assert diagnosis.verdict_label(family_results(0.5, ceiling_p=0.01)) == "inconclusive"


def planted_run(site_class: str, ceiling_p: float, wide_best_mode: bool, probe_low: float, translated: str):
    """A full planted run (conditions, decomposition, verdict and label) for the consistency grid."""
    replace = summary(0.05, 0.02, 0.08, name="context-free self-patch replace", p=ceiling_p)
    other = summary(0.06, -0.005, 0.125, p=0.09) if wide_best_mode else summary(0.01, -0.02, 0.04)
    family = {
        "none": [summary(0.0, -0.03, 0.03)],
        "survivor": [summary(0.04, 0.02, 0.06, p=1e-5)],
        "best fails, other survives": [summary(0.08, 0.01, 0.15, p=0.057), summary(0.04, 0.02, 0.06, p=1e-5)],
    }[translated]
    conditions = [
        {**replace, "vector": "context-free self-patch"},
        {**other, "name": "context-free self-patch add a=1", "vector": "context-free self-patch"},
        *[{**t, "name": f"translated {i}", "vector": "translated"} for i, t in enumerate(family)],
        *[
            {**summary(0.0, -0.03, 0.03), "name": f"translated null {i}", "vector": "translated"}
            for i in range(4)
        ],
    ]
    results = planted_run_results(site_class, conditions, probe_low)
    return results, diagnosis.verdict(results), diagnosis.verdict_label(results)


@pytest.mark.parametrize("site_class", ["pre-lookup", "post-lookup", "inert", "undetermined"])
def test_stage_label_and_verdict_text_never_contradict_each_other(site_class):
    """Over a grid of planted runs: the label follows the translation stage, the text never calls a
    pre-lookup site hopeless nor the sender lost while a translated condition helps, and a withheld
    label at a pre-lookup site says why."""
    for ceiling_p in (0.001, 0.01):
        for wide_best_mode in (False, True):
            for probe_low in (0.9, 0.2):
                for translated in ("none", "survivor", "best fails, other survives"):
                    results, text, label = planted_run(
                        site_class, ceiling_p, wide_best_mode, probe_low, translated
                    )
                    stages = {s["stage"]: s for s in results["decomposition"]["stages"]}
                    case = (ceiling_p, wide_best_mode, probe_low, translated)
                    assert (label == "not supported") == stages["translation"]["passed"], case
                    assert stages["translation"]["passed"] == (translated != "none"), case
                    if site_class == "pre-lookup":
                        assert results["decomposition"]["first_lost"] != "site", case
                        assert "no vector computed from the sender can help here" not in text, case
                        if label == "inconclusive":
                            assert "lacks the power to show a help" in text, case
                    else:
                        assert label in ("not supported", "inconclusive"), case
                    if stages["translation"]["passed"]:
                        assert "The signal is lost at the sender" not in text, case
