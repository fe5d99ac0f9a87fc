"""The split run's numbers over seeds: every condition's summary (means, per-seed values, Δs with their
two-level bootstrap CIs and sign-test p, rates with exact binomial CIs), and results.json's sections.

Pure functions over per-item scores (docs/DESIGN.md, "Metrics and statistics"); the per-seed work is in
``experiment.py``, the site diagnosis in ``diagnosis.py`` and the verdict in ``verdict.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mi_bridge.bridges.ridge import PREDICTORS
from mi_bridge.config import ExperimentConfig
from mi_bridge.core.evaluate import BASELINE, Condition, ItemScores
from mi_bridge.protocols.split import diagnosis, sections
from mi_bridge.protocols.split.verdict import verdict_parts, verdict_text
from mi_bridge.stats import (
    clopper_pearson,
    mean_and_seeds,
    rate_with_ci,
    sign_test_p,
    task_valid,
    two_level_bootstrap_ci,
)

if TYPE_CHECKING:
    from mi_bridge.protocols.split.experiment import SeedData
    from mi_bridge.protocols.split.sections import SplitRun

SITE_CONDITIONS = [
    Condition(diagnosis.site_condition_name(k), vector=k, mode=diagnosis.SITE_MODE)
    for k in diagnosis.SITE_KINDS
]
"""The replace-mode site controls that class a site (``diagnosis.classify_site``)."""

METRICS = {"accuracy": "correct", "logprob": "gold_logprob", "logit_diff": "logit_diff"}


def summarize(
    config: ExperimentConfig,
    seeds: list[SeedData],
    conditions: list[Condition],
    receiver_layer: int,
    sender_layer: int | None = None,
    run: SplitRun | None = None,
) -> dict:
    """results.json's ``validity``, ``site``, ``decomposition``, ``bridge``, ``conditions`` and ``verdict``
    sections, with the entries of the sections ``run`` enabled (``sections``), each in its place
    (``sender_layer``: for the verdict's commands)."""
    n_bootstrap, follow = config.n_bootstrap, [s.follow_index for s in seeds]
    seed_scores = [s.scores for s in seeds]
    conditions_out = summarize_effects(n_bootstrap, seed_scores, conditions, follow)
    by_name = {c["name"]: c for c in conditions_out}
    oracle = by_name["oracle"]
    gap, gap_ci = oracle["delta_accuracy"], oracle["delta_accuracy_ci"]
    n_test = [len(s.follow_index) for s in seeds]
    validity = {
        "chance": 1 / config.k,
        "sender_hop1_accuracy": rate_over_seeds([s.sender_accuracy for s in seeds], n_test),
        "sender_greedy_match": rate_over_seeds([s.sender_greedy_match for s in seeds], n_test),
        "receiver_oracle_accuracy": rate_over_seeds(oracle["accuracy_per_seed"], n_test),
        "relay_accuracy": rate_over_seeds(by_name["text relay"]["accuracy_per_seed"], n_test),
        "baseline_accuracy": rate_over_seeds(by_name["baseline"]["accuracy_per_seed"], n_test),
        "oracle_gap": {"mean": gap, "ci": gap_ci},
        "min_oracle_gap": config.min_oracle_gap,
        "valid": task_valid(gap, gap_ci, config.min_oracle_gap),
    }
    probe = rate_with_ci(torch.cat([s.probe_correct for s in seeds]).numpy())
    site = diagnosis.site_section(by_name, receiver_layer)
    results = {
        "statistics": STATISTICS,
        "validity": validity,
        "site": site,
        "sender_probe": probe,
        "decomposition": diagnosis.decomposition(validity, conditions_out, probe, site_class=site["class"]),
        "bridge": bridge_section(config.options.target, [s.fit for s in seeds], [s.bridge for s in seeds]),
        "conditions": conditions_out,
    }
    added = {}
    for section in sections.sections():
        entry = section.summarize(config, run, results | added) if run and section in run.active else None
        entry = section.idle() if entry is None else entry
        if entry is not None:
            added[section.key] = entry
    layers = {"sender": sender_layer, "receiver": receiver_layer}
    parts = verdict_parts(results | added, config.to_dict(), layers)
    return placed(results | {"verdict": verdict_text(parts), "verdict_parts": parts}, added)


def placed(results: dict, added: dict) -> dict:
    """``results`` with each section's entry after the one its ``after`` names (None: at the end)."""
    anchors = {section.key: section.after for section in sections.sections()}
    out = {}
    for key, value in results.items():
        out[key] = value
        out |= {name: entry for name, entry in added.items() if anchors[name] == key}
    return out | {name: entry for name, entry in added.items() if anchors[name] is None}


STATISTICS = {
    "delta_ci": "95% two-level percentile bootstrap: seeds with replacement, then items within each seed",
    "rate_ci": "95% exact binomial (Clopper-Pearson), items pooled over seeds",
    "p": "exact two-sided sign test on the items pooled over seeds (the exact McNemar test on accuracy)",
    "marks": "a cell is marked only where its Holm-adjusted p < 0.05 within its family (prompts, translated, "
    "controls, site controls; per metric) and its CI excludes 0",
    "matched_control": "a translated condition's Δ log p is judged against the mean translated vector in the "
    "same mode and α (vs_matched_control), not against 0",
}
"""How every interval and mark in results.json was computed (docs/DESIGN.md, "Metrics and statistics")."""


def rate_over_seeds(per_seed: list[float], n_per_seed: list[int]) -> dict:
    """A rate's mean over seeds (as before), its per-seed values, and its exact binomial CI over the
    pooled items (each per-seed rate is a count over that seed's items)."""
    successes = sum(round(rate * n) for rate, n in zip(per_seed, n_per_seed, strict=True))
    ci = clopper_pearson(successes, sum(n_per_seed))
    return mean_and_seeds(per_seed) | {"ci": list(ci), "n": sum(n_per_seed)}


def bridge_section(target: str, fits: list[dict], bridges: list) -> dict:
    """results.json's ``bridge``: each fit metric's mean and per-seed values, beside the trivial
    predictors' (``fits``: one ``fit_report`` per seed)."""
    bridge = {metric: mean_and_seeds([f["bridge"][metric] for f in fits]) for metric in fits[0]["bridge"]}
    bridge["ridge_lambda"] = mean_and_seeds([b.ridge_lambda for b in bridges])
    bridge["target"] = target
    bridge["trivial_predictors"] = {
        name: {metric: mean_and_seeds([f[name][metric] for f in fits]) for metric in fits[0][name]}
        for name in PREDICTORS[1:]
    }
    return bridge


def summarize_effects(
    n_bootstrap: int,
    seed_scores: list[dict[str, ItemScores]],
    conditions: Sequence[Condition],
    follow_index: list[Tensor] | None = None,
) -> list[dict]:
    """:func:`summarize_conditions`, with each translated condition's Δs against its matched control
    (``vs_matched_control``: the mean translated vector in the same mode and α, where it was evaluated)."""
    out = summarize_conditions(n_bootstrap, seed_scores, conditions, follow_index)
    pairs = [
        (i, c, diagnosis.matched_control_name(c.name))
        for i, c in enumerate(conditions)
        if c.vector == "translated" and diagnosis.matched_control_name(c.name) in seed_scores[0]
    ]
    compare = lambda p: summarize_condition(n_bootstrap, seed_scores, p[1], baseline=p[2])
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for (i, _, control), summary in zip(pairs, pool.map(compare, pairs), strict=True):
            deltas = {k: v for k, v in summary.items() if k.startswith("delta_")}
            out[i] = out[i] | {"vs_matched_control": {"control": control, **deltas}}
    return out


def summarize_conditions(
    n_bootstrap: int,
    seed_scores: list[dict[str, ItemScores]],
    conditions: Sequence[Condition],
    follow_index: list[Tensor] | None = None,
) -> list[dict]:
    """``summarize_condition`` for each condition, in order, on ``torch.get_num_threads()`` threads.

    The bootstrap resampling dominates and numpy releases the GIL while it draws and averages, so
    threads share it across cores; every condition seeds its own generator, so the numbers do not
    depend on the thread count (measured: a 73-condition summary, 5 s on one thread, ~2 s on two)."""
    summarize = lambda c: summarize_condition(n_bootstrap, seed_scores, c, follow_index)
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        return list(pool.map(summarize, conditions))


def summarize_condition(
    n_bootstrap: int,
    seed_scores: list[dict[str, ItemScores]],
    condition: Condition,
    follow_index: list[Tensor] | None = None,
    baseline: str = BASELINE.name,
) -> dict:
    """Means, per-seed values and paired deltas vs ``baseline`` (docs/DESIGN.md, "Metrics and statistics").

    A Δ's CI is the two-level bootstrap (seeds, then items within seeds: each seed fits its own bridge);
    its p the exact sign test on the items pooled over seeds. Accuracy is a rate: an exact binomial CI.
    For the counterfactual self-patch, also the follow rate: the share of items answered with the C
    that B lives in under the counterfactual prompt (``follow_index``, one tensor per seed)."""
    out = {
        "name": condition.name,
        "prompt": condition.prompt,
        "vector": condition.vector,
        "mode": condition.mode,
        "alpha": condition.alpha,
        "n": sum(len(s[condition.name].correct) for s in seed_scores),
        "n_per_seed": [len(s[condition.name].correct) for s in seed_scores],
    }
    for metric, attribute in METRICS.items():
        values = [getattr(s[condition.name], attribute).numpy() for s in seed_scores]
        reference = [getattr(s[baseline], attribute).numpy() for s in seed_scores]
        per_seed = [v - b for v, b in zip(values, reference, strict=True)]
        differences = np.concatenate(per_seed)
        ci = two_level_bootstrap_ci(
            per_seed, n_resamples=n_bootstrap, seed=zlib.crc32(condition.name.encode())
        )
        key = "gold_logprob" if metric == "logprob" else metric
        out[key] = float(np.mean(np.concatenate(values)))
        out[f"{key}_per_seed"] = [float(v.mean()) for v in values]
        if metric == "accuracy":
            out["accuracy_ci"] = rate_with_ci(np.concatenate(values))["ci"]
        out[f"delta_{metric}"] = float(differences.mean())
        out[f"delta_{metric}_per_seed"] = [float(d.mean()) for d in per_seed]
        out[f"delta_{metric}_ci"] = list(ci)
        out[f"delta_{metric}_p"] = sign_test_p(differences)  # for the Holm correction over a family
    if condition.vector == "counterfactual self-patch" and follow_index is not None:
        followed = torch.cat(
            [(s[condition.name].choice == f).double() for s, f in zip(seed_scores, follow_index, strict=True)]
        )
        out["follow_rate"] = rate_with_ci(followed.numpy())
    return out
