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


def test_summaries_on_threads_equal_the_serial_loop():
    """Summaries run on a thread pool; each condition seeds its own generator, so threads must not
    change a single number, including the CIs and the counterfactual follow rate."""
    import torch

    from mi_bridge.config import ExperimentConfig
    from mi_bridge.evaluate import BASELINE, ItemScores
    from mi_bridge.experiment import SITE_CONDITIONS, summarize_condition, summarize_conditions

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
