"""Statistics: paired bootstrap confidence intervals and sign tests (scipy.stats), the Holm correction
for a family of conditions, and summaries over seeds."""

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


def sign_test_p(differences: np.ndarray) -> float:
    """Two-sided exact sign test of per-item paired differences (condition − baseline) against 0.

    On 0/1 outcomes this is the exact McNemar test: a binomial test of the items the condition gains
    against those it loses; ties carry no information and are dropped."""
    differences = np.asarray(differences, dtype=np.float64)
    gained, lost = int(np.sum(differences > 0)), int(np.sum(differences < 0))
    if gained + lost == 0:
        return 1.0
    return float(stats.binomtest(gained, gained + lost, 0.5).pvalue)


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


def survives_as_strongest(summary: dict, family_size: int, metric: str = "accuracy") -> bool:
    """Would ``summary`` count as helping if it were the strongest member of a family of
    ``family_size``? Holm's first step: it helps and p × family_size < FAMILY_ALPHA. A power check: a
    null family supports a claim only if a member as good as this control would have been seen."""
    return helps(summary, metric) and summary[f"delta_{metric}_p"] * family_size < FAMILY_ALPHA


def hurts(summary: dict, metric: str = "accuracy") -> bool:
    """A condition summary's Δ ``metric`` vs baseline is negative with its 95% CI excluding 0."""
    return excludes_zero(summary[f"delta_{metric}_ci"]) and summary[f"delta_{metric}"] < 0


def fmt_ci(interval: Sequence[float], digits: int = 3) -> str:
    return f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"


def fmt_delta(summary: dict, metric: str = "accuracy") -> str:
    """``+0.123 [+0.100, +0.150]``: a summary's Δ ``metric`` with its 95% CI."""
    return f"{summary[f'delta_{metric}']:+.3f} {fmt_ci(summary[f'delta_{metric}_ci'])}"


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
