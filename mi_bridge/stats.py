"""Statistics: paired bootstrap confidence intervals (pooled, or two-level over seeds and items), exact
binomial intervals for rates, sign tests (scipy.stats), the Holm correction for a family of conditions,
and the one number format of an estimate with its interval."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def paired_bootstrap_ci(
    differences: np.ndarray, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-item paired differences (condition - baseline).

    Pairing is by construction: the caller passes one difference per item. A constant sample (for
    example a condition identical to the baseline) has the degenerate interval (d, d).
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size == 0:
        return (float("nan"), float("nan"))
    if np.ptp(differences) == 0:
        value = float(differences[0])
        return (value, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        result = stats.bootstrap(
            (differences,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def two_level_bootstrap_ci(
    groups: Sequence[np.ndarray], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the pooled mean of per-item paired differences, one array per seed.

    Each seed fits its own bridge, so its items are not independent of each other: a replicate draws
    the seeds with replacement, then items with replacement within each drawn seed, and pools them
    (weighted by item counts, as the point estimate is). The interval then carries the between-seed
    variance of the fit; with one seed it is the item bootstrap. A constant sample is degenerate.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups if np.size(g)]
    if not groups:
        return (float("nan"), float("nan"))
    pooled = np.concatenate(groups)
    if np.ptp(pooled) == 0:
        value = float(pooled[0])
        return (value, value)
    rng = np.random.default_rng(seed)
    n_seeds = len(groups)
    item_means = np.stack([_resampled_means(g, n_resamples, rng) for g in groups])  # (seeds, resamples)
    picks = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    # The j-th pick of replicate b reads its seed's ((b + j) mod B)-th item resample: a seed drawn twice in
    # one replicate gets two independent item resamples, at the cost of one resample set per seed.
    columns = (np.arange(n_resamples)[:, None] + np.arange(n_seeds)[None, :]) % n_resamples
    sizes = np.array([g.size for g in groups], dtype=np.float64)[picks]
    replicates = (item_means[picks, columns] * sizes).sum(1) / sizes.sum(1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return (float(low), float(high))


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples with replacement, drawn in chunks of about 4M indices."""
    chunk = max(1, (1 << 22) // values.size)
    return np.concatenate(
        [
            values[rng.integers(0, values.size, size=(min(chunk, n_resamples - start), values.size))].mean(1)
            for start in range(0, n_resamples, chunk)
        ]
    )


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial (Clopper–Pearson) interval of a rate: never of zero width, even at 0 or 1 of n."""
    if n == 0:
        return (float("nan"), float("nan"))
    interval = stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="exact")
    return (float(interval.low), float(interval.high))


def rate_with_ci(outcomes: np.ndarray) -> dict:
    """``{"mean", "ci", "n"}`` of 0/1 outcomes (an accuracy, a follow rate), with the exact interval."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    ci = clopper_pearson(int(outcomes.sum()), outcomes.size)
    return {"mean": float(outcomes.mean()), "ci": list(ci), "n": int(outcomes.size)}


def sign_test_p(differences: np.ndarray) -> float:
    """Two-sided exact sign test of per-item paired differences (condition − baseline) against 0.

    On 0/1 outcomes this is the exact McNemar test: a binomial test of the items the condition gains
    against those it loses; ties carry no information and are dropped."""
    differences = np.asarray(differences, dtype=np.float64)
    gained, lost = int(np.sum(differences > 0)), int(np.sum(differences < 0))
    if gained + lost == 0:
        return 1.0
    return float(stats.binomtest(gained, gained + lost, 0.5).pvalue)


def seeds_combined_p(per_seed: Sequence[np.ndarray]) -> float:
    """One-sided p that paired differences (condition − reference) are positive, with each seed one unit:
    every seed's exact sign test (greater), combined by Fisher's method (``scipy.stats.combine_pvalues``).

    Each seed trains its own sources, so items pooled over seeds are not independent draws of one
    experiment; within a seed, given its sources, they are. A seed without a discordant item gives p = 1.
    """
    p_values = []
    for differences in per_seed:
        differences = np.asarray(differences, dtype=np.float64)
        gained, lost = int(np.sum(differences > 0)), int(np.sum(differences < 0))
        if gained + lost == 0:
            p_values.append(1.0)
        else:
            p_values.append(float(stats.binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue))
    return float(stats.combine_pvalues(p_values, method="fisher").pvalue)


FAMILY_ALPHA = 0.05
"""Family-wise error rate of a claim that some condition of a family helps (Holm correction)."""


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values: rejecting every p_adj < α keeps the family-wise error ≤ α.

    Step-down: the i-th smallest p (from 0) is multiplied by m − i, and the adjusted values are made
    monotone in that order."""
    p_values = np.asarray(p_values, dtype=np.float64)
    m = p_values.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def task_valid(gap: float, ci: Sequence[float], min_gap: float) -> bool:
    """The task-validity rule: oracle - baseline at least ``min_gap``, with its CI above 0."""
    return bool(gap >= min_gap and ci[0] > 0)


def excludes_zero(interval: Sequence[float]) -> bool:
    low, high = interval
    return bool(low > 0 or high < 0)


def helps(summary: dict, metric: str = "accuracy") -> bool:
    """A condition summary's Δ ``metric`` vs baseline is positive with its 95% CI excluding 0."""
    return excludes_zero(summary[f"delta_{metric}_ci"]) and summary[f"delta_{metric}"] > 0


def helps_in_family(family: Sequence[dict], metric: str = "accuracy") -> list[bool]:
    """Per summary of ``family``: it helps (:func:`helps`) and its sign-test p (``delta_{metric}_p``)
    survives the Holm correction over the whole family. Use it wherever a claim rests on any member."""
    adjusted = holm([s[f"delta_{metric}_p"] for s in family])
    return [helps(s, metric) and p < FAMILY_ALPHA for s, p in zip(family, adjusted, strict=True)]


def holm_marks(family: Sequence[dict], metric: str = "accuracy", key: str | None = None) -> list[int]:
    """Per summary of ``family``: +1 where it helps and -1 where it hurts (95% CI excludes 0 on that
    side) with its sign-test p surviving the Holm correction over the family, else 0. What a report
    marks; ``key`` reads a nested comparison (e.g. against a matched control) instead of the summary."""
    read = [s[key] if key else s for s in family]
    adjusted = holm([r[f"delta_{metric}_p"] for r in read])
    return [
        (1 if helps(r, metric) else -1 if hurts(r, metric) else 0) if p < FAMILY_ALPHA else 0
        for r, p in zip(read, adjusted, strict=True)
    ]


def survives_as_strongest(summary: dict, family_size: int, metric: str = "accuracy") -> bool:
    """Would ``summary`` count as helping if it were the strongest member of a family of
    ``family_size``? Holm's first step: it helps and p × family_size < FAMILY_ALPHA. A power check: a
    null family supports a claim only if a member as good as this control would have been seen."""
    return helps(summary, metric) and summary[f"delta_{metric}_p"] * family_size < FAMILY_ALPHA


def hurts(summary: dict, metric: str = "accuracy") -> bool:
    """A condition summary's Δ ``metric`` vs baseline is negative with its 95% CI excluding 0."""
    return excludes_zero(summary[f"delta_{metric}_ci"]) and summary[f"delta_{metric}"] < 0


DIGITS = 3
"""Decimals of every printed estimate and its interval: one precision for both, so that an estimate
never prints outside its own interval."""


def fmt_ci(interval: Sequence[float], digits: int = DIGITS, signed: bool = True) -> str:
    sign = "+" if signed else ""
    return f"[{interval[0]:{sign}.{digits}f}, {interval[1]:{sign}.{digits}f}]"


def fmt_estimate(value: float, interval: Sequence[float], digits: int = DIGITS, signed: bool = True) -> str:
    """``+0.123 [+0.100, +0.150]`` (a Δ) or ``0.998 [0.993, 1.000]`` (a rate): one precision for both."""
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}f} {fmt_ci(interval, digits, signed)}"


def fmt_rate(rate: dict, digits: int = DIGITS) -> str:
    """A ``{"mean", "ci"}`` rate with its exact interval, unsigned."""
    return fmt_estimate(rate["mean"], rate["ci"], digits, signed=False)


def fmt_delta(summary: dict, metric: str = "accuracy", digits: int = DIGITS) -> str:
    """``+0.123 [+0.100, +0.150]``: a summary's Δ ``metric`` with its 95% CI."""
    return fmt_estimate(summary[f"delta_{metric}"], summary[f"delta_{metric}_ci"], digits)


def error_bars(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> np.ndarray:
    """matplotlib ``xerr``/``yerr`` (2, n) from point estimates and their CIs."""
    values = np.asarray(values, dtype=np.float64)
    intervals = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    return np.stack([values - intervals[:, 0], intervals[:, 1] - values])


def bootstrap_statistic(samples: Sequence[np.ndarray], statistic, *, n_resamples: int, seed: int = 0):
    """Point estimate and paired percentile bootstrap 95% CI of ``statistic(*samples)`` over items."""
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    estimate = float(statistic(*samples))
    result = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return estimate, [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def mean_with_ci(values: np.ndarray, *, n_resamples: int, seed: int = 0) -> dict:
    """``{"mean", "ci", "n"}`` of per-item values (e.g. 0/1 outcomes), percentile bootstrap."""
    values = np.asarray(values, dtype=np.float64)
    ci = paired_bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return {"mean": float(values.mean()), "ci": list(ci), "n": int(values.size)}


def mean_and_seeds(per_seed: list[float]) -> dict:
    """``{"mean": ..., "per_seed": [...]}`` as stored in results.json."""
    return {"mean": float(np.mean(per_seed)), "per_seed": [float(x) for x in per_seed]}
