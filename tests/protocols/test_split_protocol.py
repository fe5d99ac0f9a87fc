"""The split protocol: its site diagnosis (the counterfactual and context-free prompts, the site classes,
the decomposition), and a report a reviewer trusts (the run answers both questions, the requested site and
a pre-lookup one; its verdict ends in commands; its figure shows the lookup phase; the norm ablation reads
Δ log p against matched controls)."""

import json

import pytest
import torch

from mi_bridge.models.language import toy_language
from mi_bridge.models.task import sample_items
from mi_bridge.protocols.split import diagnosis
from mi_bridge.run import main
from tests.helpers import pythia_language


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

    assert result["stages"][-1]["status"] == "not run"


@pytest.mark.parametrize("lost", ["task", "site", "sender", "translation"])
def test_stages_after_the_first_lost_stage_read_not_testable_never_fails(lost):
    """Once the signal is lost, a later stage that fails says nothing about its own part of the chain:
    its status is "not testable here", and no stage anywhere reads "fails"."""
    bad, good = summary(0.0, -0.1, 0.1), summary(0.7, 0.6, 0.8)
    cases = {
        "task": (good, 0.9, bad, False),
        "site": (bad, 0.2, bad, True),  # the sender and the translation fail too
        "sender": (good, 0.2, bad, True),
        "translation": (good, 0.9, bad, True),
    }
    result = planted_results(*cases[lost])
    assert result["first_lost"] == lost
    statuses = [s["status"] for s in result["stages"]]
    order = [s["stage"] for s in result["stages"]]
    assert "fails" not in statuses
    assert statuses[order.index(lost)] == "LOST here"
    for stage in result["stages"][order.index(lost) + 1 :]:
        if stage["passed"] is False:
            assert stage["status"] == "not testable here"
    assert all(s == "passes" for s in statuses[: order.index(lost)])


def test_the_report_prints_the_status_the_decomposition_holds():
    from mi_bridge.protocols.split.report import decomposition_rows

    result = planted_results(summary(0.0, -0.1, 0.1), 0.2, summary(0.0, -0.1, 0.1))
    rows = {r[0]: r for r in decomposition_rows(result)}
    assert rows["site"][3] == "LOST here"
    assert rows["sender"][3] == rows["translation"][3] == "not testable here"


def test_the_site_stage_reads_the_one_context_free_ceiling_not_the_best_mode():
    """Another context-free mode with a higher mean must not become the decomposition's ceiling: the
    site stage, the site diagnosis and the verdict quote the replace-mode condition."""
    replace = {**summary(0.01, -0.02, 0.04), "name": "context-free self-patch replace"}
    better = {**summary(0.2, 0.1, 0.3), "name": "context-free self-patch add a=1"}
    conditions = [{**c, "vector": "context-free self-patch"} for c in (better, replace)]
    conditions.append({**summary(0.0, -0.1, 0.1), "name": "translated replace", "vector": "translated"})
    assert diagnosis.ceiling(conditions)["name"] == "context-free self-patch replace"
    validity = {"oracle_gap": {"mean": 0.7, "ci": [0.68, 0.72]}, "valid": True, "chance": 0.25}
    probe = {"mean": 0.9, "ci": [0.88, 0.92], "n": 100}
    stage = diagnosis.decomposition(validity, conditions, probe)["stages"][1]
    assert stage["condition"] == "context-free self-patch replace" and stage["value"] == 0.01


def test_the_runs_verdict_label_follows_validity_help_and_site():
    """The transfer experiment's label says what happened: untestable where the task is not valid or the
    site admits no sender vector; transfer helps where any translated condition survives Holm."""
    from mi_bridge.protocols.split.diagnosis import verdict_label
    from mi_bridge.report.result import VERDICTS

    def results(valid: bool, site: str, translated_ci: tuple[float, float]) -> dict:
        low, high = translated_ci
        translated = summary((low + high) / 2, low, high, name="translated", vector="translated")
        ceiling = summary(
            0.5, 0.4, 0.6, name="context-free self-patch replace", vector="context-free self-patch"
        )
        return {"validity": {"valid": valid}, "site": {"class": site}, "conditions": [ceiling, translated]}

    assert verdict_label(results(False, "pre-lookup", (0.1, 0.2))) == "untestable here"
    assert verdict_label(results(True, "pre-lookup", (0.1, 0.2))) == "transfer helps"
    assert verdict_label(results(True, "post-lookup", (0.1, 0.2))) == "transfer helps"
    assert verdict_label(results(True, "pre-lookup", (-0.1, 0.1))) == "no transfer"
    for site in ("post-lookup", "inert", "undetermined"):
        assert verdict_label(results(True, site, (-0.1, 0.1))) == "untestable here"
    assert set(diagnosis.LABELS) <= set(VERDICTS)


def scan_row(layer: int, site_class: str, context_free: float = 0.5) -> dict:
    return {"layer": layer, "class": site_class, "context_free": {"mean": context_free}}


def test_the_second_site_is_the_nearest_pre_lookup_layer_and_only_off_a_pre_lookup_site():
    scan = [scan_row(0, "pre-lookup", 0.7), scan_row(1, "post-lookup"), scan_row(2, "post-lookup")]
    assert diagnosis.second_site_layer(scan, 1) == 0
    assert diagnosis.second_site_layer(scan, 2) == 0
    assert diagnosis.second_site_layer(scan, 0) is None  # already pre-lookup
    assert diagnosis.second_site_layer(scan[1:], 1) is None  # no pre-lookup layer found
    assert diagnosis.second_site_layer([], 1) is None  # no scan
    # ties in distance go to the larger context-free ceiling, then to the lower layer
    tied = [scan_row(0, "pre-lookup", 0.3), scan_row(1, "post-lookup"), scan_row(2, "pre-lookup", 0.6)]
    assert diagnosis.second_site_layer(tied, 1) == 2
    even = [scan_row(0, "pre-lookup", 0.6), scan_row(1, "inert"), scan_row(2, "pre-lookup", 0.6)]
    assert diagnosis.second_site_layer(even, 1) == 0


VALIDITY = {
    "oracle_gap": {"mean": 0.7, "ci": [0.68, 0.72]},
    "valid": True,
    "chance": 0.25,
    "min_oracle_gap": 0.25,
}


def planted_run_results(
    site_class: str, conditions: list[dict], probe_low: float, second: dict | None = None
) -> dict:
    """results.json's sections that the decomposition, the verdict and the label read, for a valid task
    at a planted site class (the text relay is added)."""
    conditions = [*conditions, {**summary(0.7, 0.68, 0.72), "name": "text relay", "vector": None}]
    probe = {"mean": probe_low + 0.02, "ci": [probe_low, probe_low + 0.04], "n": 100}
    cosine = {"mean": 0.9}
    site = {
        "class": site_class,
        "layer": 1,
        "follow_rate": {"mean": 0.99, "ci": [0.97, 1.0], "n": 100},
        "self_patch": {"mean": 0.7, "ci": [0.65, 0.75]},
        "explanation": "(planted)",
    }
    results = {
        "validity": VALIDITY,
        "site": site,
        "site_scan": [],
        "bridge": {
            "normalized_cosine": cosine,
            "centered_cosine": cosine,
            "trivial_predictors": {"shuffled_pairs": {"normalized_cosine": {"mean": 0.0}}},
        },
        "conditions": conditions,
        "decomposition": diagnosis.decomposition(VALIDITY, conditions, probe, site_class=site_class),
    }
    if second is not None:
        results["second_site"] = second
    return results


def verdict_of(results: dict) -> tuple[dict, str]:
    from mi_bridge.config import ExperimentConfig
    from mi_bridge.protocols.split.verdict import verdict_parts, verdict_text

    config = ExperimentConfig(n_items=300, seeds=2).to_dict()
    parts = verdict_parts(results, config, {"sender": 2, "receiver": 1})
    return parts, verdict_text(parts)


def planted_verdict(site_class: str, translated: dict) -> tuple[dict, str]:
    ceiling = {**summary(0.04, 0.005, 0.075), "name": "context-free self-patch replace"}
    conditions = [
        {**ceiling, "vector": "context-free self-patch"},
        {**translated, "name": "translated replace", "vector": "translated"},
    ]
    results = planted_run_results(site_class, conditions, probe_low=0.93)
    return results["decomposition"], verdict_of(results)[1]


@pytest.mark.parametrize("site_class", ["pre-lookup", "post-lookup", "inert", "undetermined"])
def test_the_translation_is_blamed_only_at_a_pre_lookup_site(site_class):
    """A ceiling that clears 0 next to a high follow rate (post-lookup) keeps the blame off the
    translation: the site class decides the site stage."""
    decomposition, text = planted_verdict(site_class, translated=summary(0.0, -0.03, 0.03))
    pre_lookup = site_class == "pre-lookup"
    assert decomposition["first_lost"] == ("translation" if pre_lookup else "site")
    assert ("the signal is lost in the translation" in text) == pre_lookup
    assert ("The translation is not testable there" in text) == (not pre_lookup)


def test_a_translated_vector_that_helps_off_a_pre_lookup_site_is_reported_not_denied():
    decomposition, text = planted_verdict("post-lookup", translated=summary(0.1, 0.06, 0.14))
    assert decomposition["first_lost"] == "site"
    assert "no vector from the sender can help" not in text
    assert "'translated replace' helps" in text
    assert text.startswith("Result: Transfer helps at receiver layer 1 (post-lookup)")


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
    return {"validity": VALIDITY, "site": {"class": "pre-lookup"}, "conditions": [context_free, *translated]}


@pytest.mark.parametrize("best_p, label", [(0.02, "no transfer"), (0.004, "transfer helps")])
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
    assert stages["first_lost"] == ("translation" if label == "no transfer" else None)


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
    assert diagnosis.verdict_label(results) == "transfer helps"


def test_without_the_power_to_show_a_help_the_label_is_untestable():
    """At p = 0.01 the ceiling clears its own CI but would not survive Holm over 10 (0.1): a translated
    condition as good as the ceiling would fail, so its absence says nothing."""
    assert diagnosis.verdict_label(family_results(0.5, ceiling_p=0.001)) == "no transfer"
    assert diagnosis.verdict_label(family_results(0.5, ceiling_p=0.01)) == "untestable here"


def planted_run(site_class: str, ceiling_p: float, probe_low: float, translated: str):
    """A full planted run (conditions, decomposition, verdict and label) for the consistency grid."""
    replace = summary(0.05, 0.02, 0.08, name="context-free self-patch replace", p=ceiling_p)
    family = {
        "none": [summary(0.0, -0.03, 0.03)],
        "survivor": [summary(0.04, 0.02, 0.06, p=1e-5)],
        "best fails, other survives": [summary(0.08, 0.01, 0.15, p=0.057), summary(0.04, 0.02, 0.06, p=1e-5)],
    }[translated]
    conditions = [
        {**replace, "vector": "context-free self-patch"},
        *[{**t, "name": f"translated {i}", "vector": "translated"} for i, t in enumerate(family)],
        *[
            {**summary(0.0, -0.03, 0.03), "name": f"translated null {i}", "vector": "translated"}
            for i in range(4)
        ],
    ]
    results = planted_run_results(site_class, conditions, probe_low)
    parts, text = verdict_of(results)
    return results, parts, text, diagnosis.verdict_label(results)


@pytest.mark.parametrize("site_class", ["pre-lookup", "post-lookup", "inert", "undetermined"])
def test_stage_label_and_verdict_text_never_contradict_each_other(site_class):
    """Over a grid of planted runs: the label follows the translation stage, the text never calls a
    pre-lookup site hopeless nor the sender lost while a translated condition helps, an untestable
    label at a pre-lookup site says why, and every verdict has its three parts with commands."""
    for ceiling_p in (0.001, 0.01):
        for probe_low in (0.9, 0.2):
            for translated in ("none", "survivor", "best fails, other survives"):
                results, parts, text, label = planted_run(site_class, ceiling_p, probe_low, translated)
                stages = {s["stage"]: s for s in results["decomposition"]["stages"]}
                case = (ceiling_p, probe_low, translated)
                assert (label == "transfer helps") == stages["translation"]["passed"], case
                assert stages["translation"]["passed"] == (translated != "none"), case
                assert text.startswith(f"Result: {label[0].upper()}{label[1:]} at receiver layer 1"), case
                assert parts["next"], case
                assert all(s["command"].startswith("python -m mi_bridge.") for s in parts["next"]), case
                lost = results["decomposition"]["first_lost"]
                if site_class == "pre-lookup":
                    assert lost != "site", case
                    assert "no vector from the sender can help" not in text, case
                    if label == "untestable here" and lost == "translation":
                        assert "lacks the power to show a help" in text, case
                else:
                    assert label in ("transfer helps", "untestable here"), case
                if stages["translation"]["passed"]:
                    assert "The sender state lacks B" not in text, case


def second_site_section(label: str, translated: dict) -> dict:
    ceiling = {**summary(0.7, 0.6, 0.8), "name": "context-free self-patch replace"}
    conditions = [
        {**ceiling, "vector": "context-free self-patch"},
        {**translated, "name": "translated replace", "vector": "translated"},
    ]
    probe = {"mean": 0.95, "ci": [0.93, 0.97], "n": 100}
    site = {
        "class": "pre-lookup",
        "layer": 0,
        "follow_rate": {"mean": 0.0, "ci": [0.0, 0.03], "n": 100},
        "self_patch": {"mean": 0.7, "ci": [0.6, 0.8]},
    }
    return {
        "layer": 0,
        "rule": diagnosis.SECOND_SITE_RULE,
        "label": label,
        "site": site,
        "decomposition": diagnosis.decomposition(VALIDITY, conditions, probe, site_class="pre-lookup"),
        "bridge": {
            "normalized_cosine": {"mean": 0.6},
            "centered_cosine": {"mean": 0.6},
            "trivial_predictors": {"shuffled_pairs": {"normalized_cosine": {"mean": 0.0}}},
        },
        "conditions": conditions,
    }


@pytest.mark.parametrize(
    "label, translated, analysis",
    [
        ("no transfer", summary(0.0, -0.05, 0.05), "usability_bridge"),
        ("transfer helps", summary(0.4, 0.3, 0.5), "all"),
    ],
)
def test_next_holds_runnable_commands_with_the_runs_own_flags(label, translated, analysis):
    """At a post-lookup site with a second site, *next* reruns the run at the pre-lookup layer (the run's
    own flags, resolved layers) and names the analysis that follows from the second site's result."""
    import shlex

    from mi_bridge.cli import build_parser

    null = summary(0.0, -0.05, 0.05)
    conditions = [
        {**null, "name": "context-free self-patch replace", "vector": "context-free self-patch"},
        {**null, "name": "translated replace", "vector": "translated"},
    ]
    results = planted_run_results("post-lookup", conditions, 0.9, second_site_section(label, translated))
    parts, text = verdict_of(results)
    commands = [s["command"] for s in parts["next"]]
    assert (
        commands[0] == "python -m mi_bridge.run --sender-layer 2 --receiver-layer 0 --n-items 300 --seeds 2"
    )
    assert commands[1].startswith(f"python -m mi_bridge.analyses {analysis} ")
    assert "--receiver-layer 0" in commands[1]
    # the command parses with the real parser: the flags exist and take these values
    args = build_parser("run", "").parse_args(shlex.split(commands[0])[3:])
    assert (args.receiver_layer, args.sender_layer, args.n_items, args.seeds) == (0, 2, 300, 2)
    assert f"{label[0].upper()}{label[1:]} at receiver layer 0 (pre-lookup)" in parts["result"]
    assert f"{label.upper()} at receiver layer 0 (second site)" in parts["headline"]
    assert text.count("\n") == 2  # result / why / next


def test_a_commands_flags_round_trip_through_the_parser():
    import shlex

    from mi_bridge.cli import build_parser, config_from_args
    from mi_bridge.config import ExperimentConfig
    from mi_bridge.protocols.split.verdict import command

    options = {"alphas": (0.5, 1.0), "site_scan": False, "second_site": False}
    config = ExperimentConfig(k=3, device="cpu", options=options)
    line = command("mi_bridge.run", config.to_dict(), {"sender": 1, "receiver": 2}, n_items=64)
    parsed = config_from_args(build_parser("run", "").parse_args(shlex.split(line)[3:]))
    resolved = {**config.to_dict(), "sender_layer": 1, "receiver_layer": 2, "n_items": 64}
    assert parsed.to_dict() == ExperimentConfig.from_dict(resolved).to_dict()
    assert "--no-second-site" in line and "--no-site-scan" in line


def test_an_invalid_task_says_so_and_points_to_calibration():
    from mi_bridge.config import ExperimentConfig
    from mi_bridge.protocols.split.verdict import verdict_parts

    null = summary(0.0, -0.05, 0.05)
    conditions = [
        {**null, "name": "context-free self-patch replace", "vector": "context-free self-patch"},
        {**null, "name": "translated replace", "vector": "translated"},
    ]
    results = planted_run_results("post-lookup", conditions, 0.9)
    results["validity"] = {**VALIDITY, "valid": False, "oracle_gap": {"mean": 0.05, "ci": [-0.01, 0.11]}}
    config = ExperimentConfig(pair="pythia", template="lives-in", sender_revision="step1000").to_dict()
    parts = verdict_parts(results, config, {"sender": 2, "receiver": 1})
    assert parts["result"].startswith("Task not valid")
    assert [s["command"] for s in parts["next"]] == [
        "python -m mi_bridge.calibrate --pair pythia --sender-revision step1000"
    ]


TINY = ["--n-items", "60", "--seeds", "2", "--alphas", "0.5,1", "--n-bootstrap", "200"]


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """The toy pair's default receiver layer (1) is post-lookup and its layer 0 pre-lookup."""
    out = tmp_path_factory.mktemp("runs") / "two-sites"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_post_lookup_run_also_evaluates_the_nearest_pre_lookup_layer(two_sites):
    results = json.loads((two_sites / "results.json").read_text())
    assert results["site"]["class"] == "post-lookup" and results["layers"]["receiver"] == 1
    second = results["second_site"]
    assert second["layer"] == 0 and second["site"]["class"] == "pre-lookup"
    assert second["label"] in ("transfer helps", "no transfer", "untestable here")
    names = {c["name"] for c in second["conditions"]}
    assert {"baseline", "translated replace", "random replace", "shuffled replace", "mean replace"} <= names
    assert "text relay" not in names  # the prompts do not depend on the layer
    for c in second["conditions"]:
        assert c["n"] == 60 and c["delta_accuracy_ci"][0] <= c["delta_accuracy"] <= c["delta_accuracy_ci"][1]
    # the second site agrees with the site scan's row for its layer
    assert second["site"]["class"] == results["site_scan"][0]["class"]
    assert (two_sites / "bridge" / "second-site-L0" / "seed0" / "bridge.json").exists()
    # the verdict in three parts, *next* with runnable commands at the pre-lookup layer
    parts = results["verdict_parts"]
    assert set(parts) >= {"result", "why", "next"}
    assert "receiver layer 0 (pre-lookup)" in parts["result"]
    assert parts["next"][0]["command"].startswith("python -m mi_bridge.run ")
    assert "--receiver-layer 0" in parts["next"][0]["command"]
    assert results["verdict"].startswith("Result: ") and "\nWhy: " in results["verdict"]
    report = (two_sites / "report.md").read_text()
    assert "## Both sites" in report and "receiver layer 0 (second site)" in report
    assert "- *Next*:" in report and "`python -m mi_bridge.run " in report
    assert " fails " not in report.replace("|", " ")  # later stages read "not testable here"


@pytest.mark.slow
def test_the_run_reports_exact_rates_and_two_level_intervals(two_sites):
    results = json.loads((two_sites / "results.json").read_text())
    oracle = results["validity"]["receiver_oracle_accuracy"]
    assert oracle["ci"][0] < oracle["mean"] <= oracle["ci"][1] and oracle["n"] == 60
    follow = results["site"]["follow_rate"]
    assert follow["ci"][1] - follow["ci"][0] > 0  # never of zero width, even at 1.000
    assert "two-level" in results["statistics"]["delta_ci"]
    translated = next(c for c in results["conditions"] if c["name"] == "translated replace")
    assert translated["vs_matched_control"]["control"] == "mean replace"
    assert len(translated["delta_accuracy_per_seed"]) == 2
    # one context-free ceiling: the decomposition's site stage is the site diagnosis' number
    site_stage = results["decomposition"]["stages"][1]
    assert site_stage["condition"] == "context-free self-patch replace"
    assert site_stage["value"] == results["site"]["context_free"]["mean"]


@pytest.mark.slow
def test_no_second_site_turns_it_off(tmp_path):
    out = tmp_path / "one-site"
    assert main([*TINY, "--no-second-site", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["site"]["class"] == "post-lookup"
    assert "second_site" not in results
    assert not (out / "bridge" / "second-site-L0").exists()
    # *next* still names the pre-lookup layer the scan found
    assert "--receiver-layer 0" in results["verdict_parts"]["next"][0]["command"]


@pytest.mark.slow
def test_the_figure_has_the_lookup_phase_panel(two_sites, tmp_path, monkeypatch):
    import contextlib

    from mi_bridge.protocols.split import figure
    from mi_bridge.report.render import saved_figure

    seen = {}

    @contextlib.contextmanager
    def keeping(path, *args, **kwargs):
        with saved_figure(path, *args, **kwargs) as (fig, axes):
            seen["fig"] = fig
            yield fig, axes
            seen["labels"] = [ax.get_xlabel() for ax in fig.axes]

    monkeypatch.setattr(figure, "saved_figure", keeping)
    results = json.loads((two_sites / "results.json").read_text())
    figure.conditions_figure(results, tmp_path / "figure.png")
    assert "receiver layer (lookup phase from the site scan)" in seen["labels"]
    assert (tmp_path / "figure.png").stat().st_size > 0


def delta(mean: float, low: float, high: float) -> dict:
    return {"delta_logprob": mean, "delta_logprob_ci": [low, high], "n": 100}


def norm_verdict(norm_fixed: dict, own_norm: dict, random_direction: dict) -> str:
    from mi_bridge.analyses.runner import load_script
    from mi_bridge.report.result import Table

    norm = load_script("norm_ablation")
    scales = (1.0,)
    summaries = {
        f"{kind} x1 {mode}": delta(0.0, -0.1, 0.1) for kind in norm.LINES for mode in ("add", "replace")
    }
    summaries |= {
        "translated x1 replace": delta(-1.0, -1.2, -0.8),
        "translated dir, self-patch norm replace": norm_fixed,
        "self-patch dir, translated norm replace": delta(-0.5, -0.6, -0.4),
    }
    matched = {"vs its own norm": own_norm, "vs random direction": random_direction}
    return norm.judged(summaries, matched, scales, "", Table("t", ("c",), [])).verdict


def test_the_norm_ablation_reads_the_rescue_against_matched_controls_not_against_zero():
    """log p rises under almost any perturbation: a rescue that clears 0 but does worse than a random
    direction of the same norm is no rescue, and one below 0 that matches it is."""
    above_zero, below_zero = delta(0.2, 0.1, 0.3), delta(-0.2, -0.3, -0.1)
    helps, null, hurts = delta(1.2, 1.0, 1.4), delta(0.0, -0.1, 0.1), delta(-0.3, -0.4, -0.2)
    assert norm_verdict(above_zero, helps, hurts) == "not supported"  # the direction is at fault
    assert norm_verdict(below_zero, helps, null) == "supported"  # as good as random at that norm
    assert norm_verdict(above_zero, null, null) == "not supported"  # the norm change does not help


def test_the_verdict_says_a_fit_only_where_there_is_one():
    """The issue's example: a bridge at normalized cosine 0.045 next to shuffled pairs at 0.01 does not fit;
    one at 0.322 (SmolLM2 -> Gemma 3) does; the numbers behind the grade are in the sentence."""
    from mi_bridge.protocols.split.verdict import FIT_MARGIN, fit_grade

    def bridge(own: float, shuffled: float) -> dict:
        cosine = lambda value: {"normalized_cosine": {"mean": value}}
        return {
            "normalized_cosine": {"mean": own},
            "centered_cosine": {"mean": own},
            "trivial_predictors": {"receiver_mean": cosine(0.0), "shuffled_pairs": cosine(shuffled)},
        }

    fits, words = fit_grade(bridge(0.045, 0.010))
    assert not fits and "0.045" in words and "0.010" in words and str(FIT_MARGIN) in words
    assert fit_grade(bridge(0.322, 0.009))[0]
    assert not fit_grade(bridge(0.5, 0.45))[0]  # graded against its control, not on its own
