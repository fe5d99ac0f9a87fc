"""The transfer experiment of DESIGN.md, per seed: items -> states -> bridge -> conditions -> statistics.

Returns plain data (dicts of numbers, the bridges); rendering lives in ``report.py``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.bridge import PREDICTORS, LinearBridge, fit_report
from mi_bridge.config import ExperimentConfig
from mi_bridge.evaluate import BASELINE, Condition, ItemScores, evaluate_conditions, standard_conditions
from mi_bridge.models import ModelPair
from mi_bridge.prepare import ActivationStore, SeedContext, check_finite, seed_contexts
from mi_bridge.stats import excludes_zero, mean_and_seeds, paired_bootstrap_ci

METRICS = {"accuracy": "correct", "logprob": "gold_logprob", "logit_diff": "logit_diff"}


@dataclass
class SeedData:
    """Everything one seed produced: per-item scores, validity numbers, the bridge and its fit."""

    scores: dict[str, ItemScores]
    sender_accuracy: float
    sender_greedy_match: float
    fit: dict[str, dict[str, float]]
    bridge: LinearBridge


def run_seed(ctx: SeedContext, sender_layer: int, receiver_layer: int) -> SeedData:
    config, pair = ctx.config, ctx.pair
    test = ctx.test
    sender_logits = ctx.sender_logits()[ctx.test_idx]
    bridge = ctx.fit_bridge(sender_layer, receiver_layer)
    fit = fit_report(bridge, *ctx.bridge_data(sender_layer, receiver_layer), seed=ctx.seed)
    translated = bridge(ctx.sender_states([sender_layer])[sender_layer][ctx.test_idx])
    check_finite(translated, what="bridge outputs")
    self_patch = ctx.receiver_states([receiver_layer])[receiver_layer][ctx.test_idx]
    scores = evaluate_conditions(
        pair.receiver,
        ctx.test_prompts(),
        test.answer_candidates,
        test.gold_index,
        layer=receiver_layer,
        position=ctx.position(),
        vectors=control_vectors(translated, self_patch, ctx.seed),
        conditions=standard_conditions(config.alphas),
        batch_size=config.batch_size,
        description=f"seed {ctx.seed}: conditions",
    )
    sender_choice = sender_logits.gather(1, test.bridge_candidates).argmax(-1)
    return SeedData(
        scores=scores,
        sender_accuracy=float((sender_choice == test.gold_index).double().mean()),
        sender_greedy_match=float((sender_logits.argmax(-1) == test.bridge_ids).double().mean()),
        fit=fit,
        bridge=bridge,
    )


def control_vectors(
    translated: Float[Tensor, "n d"], self_patch: Float[Tensor, "n d"], seed: int
) -> dict[str, Float[Tensor, "n d"]]:
    """The translated vectors and their controls (norm-matched random, shuffled, mean, self-patch)."""
    n = translated.shape[0]
    generator = torch.Generator().manual_seed(20_000 + seed)
    return {
        "translated": translated,
        "random": random_like(translated, generator),
        "shuffled": translated[derangement(n, generator)],
        "mean": translated.mean(0, keepdim=True).expand(n, -1),
        "self-patch": self_patch,
    }


def random_like(vectors: Float[Tensor, "n d"], generator: torch.Generator) -> Float[Tensor, "n d"]:
    """Random directions with each row's norm."""
    direction = torch.randn(vectors.shape, generator=generator)
    return direction / direction.norm(dim=-1, keepdim=True) * vectors.norm(dim=-1, keepdim=True)


def derangement(n: int, generator: torch.Generator) -> Int[Tensor, " n"]:
    """An index permutation in which no item keeps its own position (a cyclic shift of a permutation)."""
    order = torch.randperm(n, generator=generator)
    index = torch.empty_like(order)
    index[order] = order.roll(1)
    return index


# ---------------------------------------------------------------------------------------------------------
# Aggregation over seeds


def summarize(config: ExperimentConfig, seeds: list[SeedData], conditions: list[Condition]) -> dict:
    """results.json's ``validity``, ``bridge`` and ``conditions`` sections, and the verdict."""
    conditions_out = [summarize_condition(config, [s.scores for s in seeds], c) for c in conditions]
    by_name = {c["name"]: c for c in conditions_out}
    oracle = by_name["oracle"]
    gap, gap_ci = oracle["delta_accuracy"], oracle["delta_accuracy_ci"]
    valid = bool(gap >= config.min_oracle_gap and gap_ci[0] > 0)
    validity = {
        "chance": 1 / config.k,
        "sender_hop1_accuracy": mean_and_seeds([s.sender_accuracy for s in seeds]),
        "sender_greedy_match": mean_and_seeds([s.sender_greedy_match for s in seeds]),
        "receiver_oracle_accuracy": mean_and_seeds(oracle["accuracy_per_seed"]),
        "relay_accuracy": mean_and_seeds(by_name["text relay"]["accuracy_per_seed"]),
        "baseline_accuracy": mean_and_seeds(by_name["baseline"]["accuracy_per_seed"]),
        "oracle_gap": {"mean": gap, "ci": gap_ci},
        "min_oracle_gap": config.min_oracle_gap,
        "valid": valid,
    }
    bridge = {
        metric: mean_and_seeds([s.fit["bridge"][metric] for s in seeds]) for metric in seeds[0].fit["bridge"]
    }
    bridge["ridge_lambda"] = mean_and_seeds([s.bridge.ridge_lambda for s in seeds])
    bridge["target"] = config.target
    bridge["trivial_predictors"] = {
        name: {metric: mean_and_seeds([s.fit[name][metric] for s in seeds]) for metric in seeds[0].fit[name]}
        for name in PREDICTORS[1:]
    }
    results = {"validity": validity, "bridge": bridge, "conditions": conditions_out}
    results["verdict"] = verdict(results)
    return results


def summarize_condition(
    config: ExperimentConfig,
    seed_scores: list[dict[str, ItemScores]],
    condition: Condition,
    baseline: str = BASELINE.name,
) -> dict:
    """Means, per-seed values and paired deltas vs ``baseline`` with bootstrap CIs (items pooled over seeds)."""
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
        differences = np.concatenate([v - b for v, b in zip(values, reference, strict=True)])
        ci = paired_bootstrap_ci(
            differences, n_resamples=config.n_bootstrap, seed=zlib.crc32(condition.name.encode())
        )
        key = "gold_logprob" if metric == "logprob" else metric
        out[key] = float(np.mean(np.concatenate(values)))
        out[f"{key}_per_seed"] = [float(v.mean()) for v in values]
        out[f"delta_{metric}"] = float(differences.mean())
        out[f"delta_{metric}_per_seed"] = [
            float((v - b).mean()) for v, b in zip(values, reference, strict=True)
        ]
        out[f"delta_{metric}_ci"] = list(ci)
    return out


def verdict(results: dict) -> str:
    """One paragraph: what the numbers support, and what they cannot."""
    validity, bridge = results["validity"], results["bridge"]
    by_name = {c["name"]: c for c in results["conditions"]}
    fmt = lambda c: (
        f"{c['delta_accuracy']:+.3f} [{c['delta_accuracy_ci'][0]:+.3f}, {c['delta_accuracy_ci'][1]:+.3f}]"
    )
    if not validity["valid"]:
        gap = validity["oracle_gap"]
        return (
            f"Task not valid, no conclusion: the receiver's oracle accuracy "
            f"({validity['receiver_oracle_accuracy']['mean']:.3f}) is not clearly above its baseline "
            f"({validity['baseline_accuracy']['mean']:.3f}; gap {gap['mean']:+.3f}, 95% CI "
            f"[{gap['ci'][0]:+.3f}, {gap['ci'][1]:+.3f}], required >= {validity['min_oracle_gap']}). "
            "The receiver cannot use the bridge entity even when it is written in the slot, so injected "
            "states cannot be judged here."
        )
    translated = [c for c in results["conditions"] if c["vector"] == "translated"]
    helps = [c for c in translated if excludes_zero(c["delta_accuracy_ci"]) and c["delta_accuracy"] > 0]
    hurts = [c for c in translated if excludes_zero(c["delta_accuracy_ci"]) and c["delta_accuracy"] < 0]
    best = max(translated, key=lambda c: c["delta_accuracy"])
    trivial = bridge["trivial_predictors"]
    parts = [
        f"The bridge reaches normalized cosine {bridge['normalized_cosine']['mean']:.3f} on held-out items "
        f"(centered {bridge['centered_cosine']['mean']:.3f}, R^2 {bridge['r2']['mean']:.3f}; the receiver-mean "
        f"predictor has raw cosine {trivial['receiver_mean']['raw_cosine']['mean']:.3f} against the bridge's "
        f"{bridge['raw_cosine']['mean']:.3f})."
    ]
    if helps:
        parts.append(
            f"{len(helps)} of {len(translated)} translated-vector conditions raise accuracy with a CI above 0; "
            f"the best is '{best['name']}' with delta accuracy {fmt(best)}."
        )
    else:
        parts.append(
            f"No translated-vector condition raises accuracy with a CI above 0 (best: '{best['name']}', "
            f"{fmt(best)})."
        )
    if hurts:
        parts.append(f"{len(hurts)} are destructive (CI below 0), e.g. '{hurts[0]['name']}' {fmt(hurts[0])}.")
    self_patch = [c for c in results["conditions"] if c["vector"] == "self-patch"]
    best_self = max(self_patch, key=lambda c: c["delta_accuracy"])
    site_works = excludes_zero(best_self["delta_accuracy_ci"]) and best_self["delta_accuracy"] > 0
    if site_works and not helps:
        parts.append(
            f"Self-patch at the same site works ('{best_self['name']}' {fmt(best_self)}), so the site can carry "
            "the bridge entity: the failure is in the translation, not in the site."
        )
    elif site_works:
        parts.append(f"Self-patch ceiling at this site: '{best_self['name']}' {fmt(best_self)}.")
    else:
        parts.append(
            "Even the receiver's own oracle state at this site does not help (self-patch CI includes or is "
            "below 0), so this site and layer cannot test transfer: try an earlier receiver layer."
        )
    relay = by_name["text relay"]
    parts.append(f"The text relay changes accuracy by {fmt(relay)} (n={relay['n']} items over all seeds).")
    return " ".join(parts)


def run_experiment(
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int, store: ActivationStore
) -> tuple[dict, list[SeedData]]:
    seeds = [run_seed(ctx, sender_layer, receiver_layer) for ctx in seed_contexts(config, pair, store)]
    return summarize(config, seeds, standard_conditions(config.alphas)), seeds
