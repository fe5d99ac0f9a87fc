"""Bootstrap confidence intervals cover a known effect at about their nominal rate; the sign test and the
Holm correction keep a family's false positives at their level."""

import numpy as np

from mi_bridge.stats import (
    FAMILY_ALPHA,
    clopper_pearson,
    excludes_zero,
    fmt_estimate,
    fmt_rate,
    helps_in_family,
    holm,
    holm_marks,
    paired_bootstrap_ci,
    rate_with_ci,
    sign_test_p,
    two_level_bootstrap_ci,
)


def test_bootstrap_intervals_cover_a_known_effect():
    rng = np.random.default_rng(0)
    effect, repetitions = 0.3, 300
    covered = 0
    for i in range(repetitions):
        differences = rng.normal(effect, 1.0, size=80)
        low, high = paired_bootstrap_ci(differences, n_resamples=1000, seed=i)
        covered += low <= effect <= high
    assert 0.90 <= covered / repetitions <= 0.99


def test_a_clear_effect_excludes_zero_and_no_effect_mostly_does_not():
    rng = np.random.default_rng(1)
    assert excludes_zero(paired_bootstrap_ci(rng.normal(1.0, 1.0, 100)))
    false_positives = sum(
        excludes_zero(paired_bootstrap_ci(rng.normal(0, 1, 100), seed=i)) for i in range(100)
    )
    assert false_positives <= 12


def test_identical_conditions_give_a_degenerate_interval():
    assert paired_bootstrap_ci(np.zeros(50)) == (0.0, 0.0)
    assert paired_bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25)


def test_summaries_on_threads_equal_the_serial_loop():
    """Summaries run on a thread pool; each condition seeds its own generator, so threads must not
    change a single number, including the CIs and the counterfactual follow rate."""
    import torch

    from mi_bridge.core.evaluate import BASELINE, ItemScores
    from mi_bridge.protocols.split.experiment import (
        SITE_CONDITIONS,
        summarize_condition,
        summarize_conditions,
    )

    generator = torch.Generator().manual_seed(0)

    def scores(n: int) -> ItemScores:
        choice = torch.randint(0, 3, (n,), generator=generator)
        return ItemScores(
            correct=(choice == 0).double(),
            gold_logprob=torch.randn(n, generator=generator),
            logit_diff=torch.randn(n, generator=generator),
            choice=choice,
        )

    conditions = [BASELINE, *SITE_CONDITIONS]
    seed_scores = [{c.name: scores(50) for c in conditions} for _ in range(2)]
    follow = [torch.randint(0, 3, (50,), generator=generator) for _ in range(2)]
    serial = [summarize_condition(200, seed_scores, c, follow) for c in conditions]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the pool uses this many threads, so the test runs on two
    try:
        assert summarize_conditions(200, seed_scores, conditions, follow) == serial
    finally:
        torch.set_num_threads(threads)
    assert any("follow_rate" in s for s in serial)


def test_the_sign_test_is_the_exact_mcnemar_test_on_discordant_items():
    # 9 items gained, 1 lost, 40 ties: two-sided binomial tail 2 * (C(10,9) + C(10,10)) / 2^10
    differences = np.array([1] * 9 + [-1] + [0] * 40)
    assert sign_test_p(differences) == 2 * 11 / 1024
    assert sign_test_p(np.zeros(30)) == 1.0


def test_holm_adjusts_a_textbook_family():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_holm_keeps_the_family_wise_error_of_ten_null_conditions_at_its_level():
    """Ten conditions with no effect on 0/1 outcomes: 'the best of them helps' read uncorrected is wrong
    in a large share of runs; after Holm, in at most FAMILY_ALPHA of them (plus sampling slack)."""
    rng = np.random.default_rng(3)
    runs, uncorrected, corrected = 400, 0, 0
    for _ in range(runs):
        baseline = rng.random((1, 200)) < 0.3
        conditions = rng.random((10, 200)) < 0.3
        p_values = [sign_test_p(c.astype(float) - baseline[0]) for c in conditions]
        uncorrected += min(p_values) < FAMILY_ALPHA
        corrected += min(holm(p_values)) < FAMILY_ALPHA
    assert uncorrected / runs > 3 * FAMILY_ALPHA
    assert corrected / runs <= FAMILY_ALPHA + 0.025


def test_a_member_helps_in_its_family_only_with_its_ci_above_0_and_its_holm_p_below_alpha():
    def member(delta, low, p):
        return {"delta_accuracy": delta, "delta_accuracy_ci": [low, 2 * delta - low], "delta_accuracy_p": p}

    family = [
        member(0.1, 0.05, 0.004),
        member(0.1, 0.05, 0.02),
        member(0.1, -0.01, 0.001),
        member(-0.1, -0.15, 0.001),
    ]
    # Holm over 4, in p order: 0.001 -> 0.004, 0.001 -> 0.004, 0.004 -> 0.008, 0.02 -> 0.02: the first
    # two help; the third's CI runs through 0, the fourth is a harm
    assert helps_in_family(family) == [True, True, False, False]
    # over 5 with three null members: 0.004 -> 0.02 helps, 0.02 -> 0.08 does not
    assert helps_in_family(family[:2] + [member(0.0, -0.1, 0.9)] * 3) == [True, False, False, False, False]


def test_an_exact_binomial_interval_has_width_at_one_and_at_zero():
    """1,500 of 1,500 correct is no certainty: the Clopper–Pearson interval reaches below 1."""
    low, high = clopper_pearson(1500, 1500)
    assert high == 1.0 and 0.997 < low < 1.0
    low, high = clopper_pearson(0, 300)
    assert low == 0.0 and 0.0 < high < 0.02
    rate = rate_with_ci(np.ones(300))
    assert rate["mean"] == 1.0 and rate["ci"][0] < 1.0 and rate["n"] == 300
    # the textbook value: 7 of 10, 95% exact interval [0.3475, 0.9333]
    assert np.allclose(clopper_pearson(7, 10), (0.34752, 0.93326), atol=1e-4)


def test_the_two_level_bootstrap_is_wider_than_the_pooled_one_when_seeds_disagree():
    """Three seeds whose bridges give +0.10, 0.00 and -0.10 on their items: pooling the items treats
    1,500 items as independent and gives a narrow interval; resampling the seeds first does not."""
    rng = np.random.default_rng(0)
    seeds = [rng.normal(effect, 0.3, 500) for effect in (0.1, 0.0, -0.1)]
    pooled = paired_bootstrap_ci(np.concatenate(seeds), n_resamples=2000, seed=1)
    two_level = two_level_bootstrap_ci(seeds, n_resamples=2000, seed=1)
    assert two_level[1] - two_level[0] > 3 * (pooled[1] - pooled[0])
    assert two_level[0] < -0.05 and two_level[1] > 0.05  # spans the seeds' disagreement
    # seeds that agree: about the pooled width (the seed level adds little)
    agreeing = [rng.normal(0.1, 0.3, 500) for _ in range(3)]
    pooled = paired_bootstrap_ci(np.concatenate(agreeing), n_resamples=2000, seed=1)
    two_level = two_level_bootstrap_ci(agreeing, n_resamples=2000, seed=1)
    assert (two_level[1] - two_level[0]) < 1.6 * (pooled[1] - pooled[0])
    assert two_level[0] > 0


def test_the_two_level_bootstrap_covers_a_known_effect_and_is_degenerate_on_constants():
    rng = np.random.default_rng(2)
    covered = sum(
        (lambda ci: ci[0] <= 0.3 <= ci[1])(
            two_level_bootstrap_ci([rng.normal(0.3, 1.0, 40) for _ in range(3)], n_resamples=500, seed=i)
        )
        for i in range(200)
    )
    assert 0.88 <= covered / 200 <= 0.995
    assert two_level_bootstrap_ci([np.zeros(20), np.zeros(30)]) == (0.0, 0.0)
    assert two_level_bootstrap_ci([np.full(5, 0.25)]) == (0.25, 0.25)


def test_estimates_and_intervals_print_with_one_precision():
    """'+0.00 [+0.001, +0.007]' prints an estimate outside its own interval; one precision cannot."""
    from mi_bridge.report.render import condition_cells

    assert fmt_estimate(0.004, [0.001, 0.007]) == "+0.004 [+0.001, +0.007]"
    assert fmt_rate({"mean": 1.0, "ci": [0.9975, 1.0]}) == "1.000 [0.998, 1.000]"
    summary = {
        "name": "x",
        "accuracy": 0.5,
        "accuracy_ci": [0.45, 0.55],
        "delta_accuracy": 0.004,
        "delta_accuracy_ci": [0.001, 0.007],
        "delta_accuracy_per_seed": [0.002, 0.006],
        "gold_logprob": -2.5,
        "delta_logprob": 0.004,
        "delta_logprob_ci": [0.001, 0.007],
        "n": 100,
    }
    cells, _ = condition_cells(summary, (0, 0), matched_column=False)
    numbers = [cell for cell in cells if "[" in cell]
    for cell in numbers:
        estimate, interval = cell.split(" ", 1)
        decimals = {len(part.split(".")[1]) for part in (estimate, *interval.strip("[]").split(", "))}
        assert len(decimals) == 1, cell


def summary_with(name: str, vector: str | None, delta: float, ci: tuple, p: float, **extra) -> dict:
    return {
        "name": name,
        "vector": vector,
        "delta_accuracy": delta,
        "delta_accuracy_ci": list(ci),
        "delta_accuracy_p": p,
        "delta_logprob": delta,
        "delta_logprob_ci": list(ci),
        "delta_logprob_p": p,
        **extra,
    }


def test_marks_appear_only_where_a_cell_survives_the_holm_correction_of_its_family():
    """Ten controls with CIs above 0 at p = 0.01 each: every one is 'significant' uncorrected, none
    survives Holm over its family of ten, so none is marked; a p = 1e-6 member is."""
    from mi_bridge.protocols.split.diagnosis import family_of
    from mi_bridge.report.render import condition_marks

    controls = [summary_with(f"random {i}", "random", 0.1, (0.02, 0.18), 0.01) for i in range(9)]
    controls.append(summary_with("random strong", "random", 0.3, (0.2, 0.4), 1e-6))
    relay = summary_with("text relay", None, 0.5, (0.4, 0.6), 0.01)  # alone in its family: survives
    marks = condition_marks([*controls, relay], family_of)
    assert all(marks[f"random {i}"] == (0, 0) for i in range(9))
    assert marks["random strong"] == (1, 1)
    assert marks["text relay"] == (1, 1)
    assert holm_marks(controls) == [0] * 9 + [1]
    harm = summary_with("harm", "mean", -0.2, (-0.3, -0.1), 1e-6)
    assert holm_marks([harm]) == [-1]


def test_a_translated_log_p_is_marked_against_its_matched_control_not_against_zero():
    """A translated condition whose log p rises by as much as the item-free mean vector's does is not
    marked in Δ log p, however clearly it clears 0; one that beats its control is."""
    from mi_bridge.protocols.split.diagnosis import family_of
    from mi_bridge.report.render import condition_marks

    as_control = summary_with("vs", "mean", 0.0, (-0.05, 0.05), 0.9, control="mean replace")
    beats = summary_with("vs", "mean", 0.2, (0.1, 0.3), 1e-6, control="mean rescale")
    translated = [
        summary_with("translated replace", "translated", 0.0, (-0.1, 0.1), 0.9, vs_matched_control=as_control)
        | {"delta_logprob": 0.2, "delta_logprob_ci": [0.1, 0.3], "delta_logprob_p": 1e-9},
        summary_with("translated rescale", "translated", 0.0, (-0.1, 0.1), 0.9, vs_matched_control=beats)
        | {"delta_logprob": 0.4, "delta_logprob_ci": [0.3, 0.5], "delta_logprob_p": 1e-9},
    ]
    marks = condition_marks(translated, family_of)
    assert marks["translated replace"] == (0, 0)
    assert marks["translated rescale"] == (0, 1)
