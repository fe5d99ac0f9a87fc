"""Protocol audit: what an experiment can show, measured before any effect is read. Pure functions.

- **injection strength**: ‖new − h‖ / ‖h‖ per condition (how much the injection changes the receiver's
  state; also ‖injected vector‖ / ‖h‖); below 1% the condition is *near-null*;
- **information asymmetry**: does the sender read anything the receiver does not;
- **floor equivalence**: a condition whose per-item outcomes cannot be told apart from zero or
  random replacement (paired bootstrap 95% CI of the difference includes 0) is *at the floor*: it
  cannot separate an informative vector from noise;
- **task validity**: an oracle must beat the baseline by ``min_gap`` with its CI above 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float
from torch import Tensor

from mi_bridge.stats import paired_bootstrap_ci, task_valid

NEAR_NULL = 0.01
"""Relative change below which an injection is flagged near-null (1% of the state's norm)."""


def relative_norms(
    h: Float[Tensor, "n pos d"], new: Float[Tensor, "n pos d"], injected: Float[Tensor, "n pos d"]
) -> dict[str, float]:
    """Mean over items and positions of ‖new − h‖/‖h‖ (change) and ‖injected‖/‖h‖ (vector)."""
    norm = h.double().norm(dim=-1).clamp_min(1e-12)
    return {
        "change": float(((new.double() - h.double()).norm(dim=-1) / norm).mean()),
        "vector": float((injected.double().norm(dim=-1) / norm).mean()),
        "state_norm": float(norm.mean()),
    }


def strength_entry(norms: Sequence[dict[str, float]]) -> dict:
    """One condition's strength over runs (batches weighted alike), with the near-null flag."""
    change = float(np.mean([n["change"] for n in norms]))
    return {
        "change": change,
        "vector": float(np.mean([n["vector"] for n in norms])),
        "state_norm": float(np.mean([n["state_norm"] for n in norms])),
        "near_null": change < NEAR_NULL,
    }


def information_asymmetry(
    sender_inputs: Sequence[Sequence[int]], receiver_inputs: Sequence[Sequence[int]]
) -> dict:
    """Share of items whose two inputs are identical, and share where the sender reads a token the
    receiver never sees (a necessary condition for the sender to know something the receiver lacks)."""
    pairs = list(zip(sender_inputs, receiver_inputs, strict=True))
    identical = np.mean([list(s) == list(r) for s, r in pairs])
    sender_only = np.mean([bool(set(s) - set(r)) for s, r in pairs])
    return {
        "identical_inputs": float(identical),
        "sender_only_tokens": float(sender_only),
        "asymmetric": bool(sender_only > 0),
    }


def paired_differences(a_runs: Sequence[np.ndarray], b_runs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-item differences a − b, averaged over runs; a condition with one run (deterministic) is
    paired with every run of the other. Every run scores the same items, so the item is the unit of
    every CI and test built on this: pooling items × runs would count one item once per run and make
    CIs too narrow by up to √runs."""
    if len(a_runs) != len(b_runs):
        if len(a_runs) == 1:
            a_runs = list(a_runs) * len(b_runs)
        elif len(b_runs) == 1:
            b_runs = list(b_runs) * len(a_runs)
        else:
            raise ValueError(f"cannot pair {len(a_runs)} runs with {len(b_runs)}")
    return per_item_mean(
        [np.asarray(a, float) - np.asarray(b, float) for a, b in zip(a_runs, b_runs, strict=True)]
    )


def per_item_mean(runs: Sequence[np.ndarray]) -> np.ndarray:
    """One value per item: its mean over runs that score the same items in the same order."""
    if len({len(r) for r in runs}) != 1:
        raise ValueError(f"runs score different numbers of items: {[len(r) for r in runs]}")
    return np.mean(np.stack([np.asarray(r, float) for r in runs]), axis=0)


def floor_equivalence(
    outcomes: dict[str, Sequence[np.ndarray]], floors: Sequence[str], *, n_resamples: int
) -> dict[str, dict]:
    """For every condition but the floors: its difference from each floor (mean, CI) and whether it is
    indistinguishable from any of them (``at_floor``)."""
    out = {}
    for name, runs in outcomes.items():
        if name in floors:
            continue
        versus = {}
        for floor in floors:
            diff = paired_differences(runs, outcomes[floor])
            ci = paired_bootstrap_ci(diff, n_resamples=n_resamples, seed=7)
            versus[floor] = {"mean": float(diff.mean()), "ci": list(ci), "n": int(diff.size)}
        out[name] = {
            "versus": versus,
            "at_floor": any(v["ci"][0] <= 0 <= v["ci"][1] for v in versus.values()),
        }
    return out


def task_validity(
    oracle_runs: Sequence[np.ndarray],
    baseline_runs: Sequence[np.ndarray],
    *,
    min_gap: float,
    n_resamples: int,
) -> dict:
    """Oracle − baseline, paired per item, with its CI; valid when at least ``min_gap`` and CI above 0."""
    diff = paired_differences(oracle_runs, baseline_runs)
    ci = paired_bootstrap_ci(diff, n_resamples=n_resamples, seed=8)
    gap = float(diff.mean())
    return {
        "gap": gap,
        "ci": list(ci),
        "n": int(diff.size),
        "min_gap": min_gap,
        "valid": task_valid(gap, ci, min_gap),
    }
