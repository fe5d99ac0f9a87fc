"""Statistics: paired bootstrap confidence intervals (scipy.stats) and summaries over seeds."""

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


def excludes_zero(interval: Sequence[float]) -> bool:
    low, high = interval
    return bool(low > 0 or high < 0)


def mean_and_seeds(per_seed: list[float]) -> dict:
    """``{"mean": ..., "per_seed": [...]}`` as stored in results.json."""
    return {"mean": float(np.mean(per_seed)), "per_seed": [float(x) for x in per_seed]}
