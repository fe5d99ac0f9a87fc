"""Bootstrap confidence intervals cover a known effect at about their nominal rate; the sign test and the
Holm correction keep a family's false positives at their level."""

import numpy as np

from mi_bridge.stats import (
    FAMILY_ALPHA,
    excludes_zero,
    helps_in_family,
    holm,
    paired_bootstrap_ci,
    sign_test_p,
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

    from mi_bridge.config import ExperimentConfig
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
    config = ExperimentConfig(n_bootstrap=200)
    serial = [summarize_condition(config, seed_scores, c, follow) for c in conditions]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the pool uses this many threads, so the test runs on two
    try:
        assert summarize_conditions(config, seed_scores, conditions, follow) == serial
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
