"""Bootstrap confidence intervals cover a known effect at about their nominal rate."""

import numpy as np

from mi_bridge.stats import excludes_zero, paired_bootstrap_ci


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
