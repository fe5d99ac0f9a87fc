"""The transfer experiment of DESIGN.md, per seed: items -> states -> bridge -> conditions -> statistics.

Returns plain data (dicts of numbers, the bridges); rendering lives in ``report.py``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.bridge import PREDICTORS, LinearBridge, fit_report
from mi_bridge.capture import capture_resid_post
from mi_bridge.config import ExperimentConfig, UserError
from mi_bridge.evaluate import BASELINE, Condition, ItemScores, evaluate_conditions, standard_conditions
from mi_bridge.models import ModelPair
from mi_bridge.stats import excludes_zero, mean_and_seeds, paired_bootstrap_ci
from mi_bridge.task import TaskItems, sample_items

METRICS = {"accuracy": "correct", "logprob": "gold_logprob", "logit_diff": "logit_diff"}


@dataclass
class SeedData:
    """Everything one seed produced: per-item scores, validity numbers, the bridge and its fit."""

    scores: dict[str, ItemScores]
    sender_accuracy: float
    sender_greedy_match: float
    fit: dict[str, dict[str, float]]
    bridge: LinearBridge


def split(n_items: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(10_000 + seed))
    return order[n_test:], order[:n_test]


def site_position(items: TaskItems, position: str) -> int:
    return items.slot_position if position == "slot" else items.final_position


def run_seed(
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int, seed: int
) -> SeedData:
    items = sample_items(pair.language, k=config.k, n_items=config.n_items, seed=seed)
    fit_idx, test_idx = split(items.n_items, config.n_test, seed)
    site = site_position(items, config.position)
    batch = config.batch_size
    tag = f"seed {seed}"

    sender_run = capture_resid_post(
        pair.sender,
        items.sender_tokens,
        layers=[sender_layer],
        positions=[-1],
        with_answer_logits=True,
        batch_size=batch,
        description=f"{tag}: sender",
    )
    sender_states = sender_run.states[sender_layer][:, 0]
    greedy_b = sender_run.answer_logits.argmax(-1)
    sender_choice = sender_run.answer_logits.gather(1, items.bridge_candidates).argmax(-1)

    # The receiver's own state at the site when the slot holds B: the relay-slot target and self-patch.
    oracle_states = capture_resid_post(
        pair.receiver,
        items.oracle_tokens,
        layers=[receiver_layer],
        positions=[site],
        batch_size=batch,
        description=f"{tag}: receiver oracle states",
    ).states[receiver_layer][:, 0]

    if config.target == "relay-slot":
        x_fit, y_fit = sender_states[fit_idx], oracle_states[fit_idx]
        x_test, y_test = sender_states[test_idx], oracle_states[test_idx]
    else:
        x_fit, y_fit = same_input_pairs(
            config, pair, items.subset(fit_idx), sender_layer, receiver_layer, tag
        )
        x_test, y_test = same_input_pairs(
            config, pair, items.subset(test_idx), sender_layer, receiver_layer, tag
        )
    check_finite(x_fit, y_fit, what="captured activations")
    bridge = LinearBridge.fit(
        x_fit, y_fit, seed=seed, metadata=bridge_metadata(config, pair, sender_layer, receiver_layer)
    )
    fit = fit_report(bridge, x_fit, y_fit, x_test, y_test, seed=seed)

    test = items.subset(test_idx)
    translated = bridge(sender_states[test_idx])
    check_finite(translated, what="bridge outputs")
    vectors = control_vectors(translated, oracle_states[test_idx], seed)
    prompts = {
        "placeholder": test.placeholder_tokens,
        "relay": test.with_slot(greedy_b[test_idx]),
        "oracle": test.oracle_tokens,
    }
    scores = evaluate_conditions(
        pair.receiver,
        prompts,
        test.answer_candidates,
        test.gold_index,
        layer=receiver_layer,
        position=site,
        vectors=vectors,
        conditions=standard_conditions(config.alphas),
        batch_size=batch,
        description=f"{tag}: conditions",
    )
    return SeedData(
        scores=scores,
        sender_accuracy=float((sender_choice[test_idx] == test.gold_index).double().mean()),
        sender_greedy_match=float((greedy_b[test_idx] == test.bridge_ids).double().mean()),
        fit=fit,
        bridge=bridge,
    )


def same_input_pairs(
    config: ExperimentConfig,
    pair: ModelPair,
    items: TaskItems,
    sender_layer: int,
    receiver_layer: int,
    tag: str,
) -> tuple[Float[Tensor, "m d_sender"], Float[Tensor, "m d_receiver"]]:
    """Both models read the same texts (sender prompt; receiver oracle prompt); states paired by token.

    Positions: the sender prompt's last token, and the receiver prompt's slot and last token.
    """
    xs, ys = [], []
    for tokens, positions in (
        (items.sender_tokens, [-1]),
        (items.oracle_tokens, [items.slot_position, items.final_position]),
    ):
        for model, layer, out in ((pair.sender, sender_layer, xs), (pair.receiver, receiver_layer, ys)):
            states = capture_resid_post(
                model, tokens, layers=[layer], positions=positions, batch_size=config.batch_size
            ).states[layer]
            out.append(states.reshape(-1, states.shape[-1]))
    return torch.cat(xs), torch.cat(ys)


def control_vectors(
    translated: Float[Tensor, "n d"], self_patch: Float[Tensor, "n d"], seed: int
) -> dict[str, Float[Tensor, "n d"]]:
    """The translated vectors and their controls (norm-matched random, shuffled, mean, self-patch)."""
    n = translated.shape[0]
    generator = torch.Generator().manual_seed(20_000 + seed)
    direction = torch.randn(translated.shape, generator=generator)
    random = direction / direction.norm(dim=-1, keepdim=True) * translated.norm(dim=-1, keepdim=True)
    # A derangement (every item gets another item's vector): a random cyclic shift of a permutation.
    order = torch.randperm(n, generator=generator)
    shuffled = torch.empty_like(translated)
    shuffled[order] = translated[order.roll(1)]
    return {
        "translated": translated,
        "random": random,
        "shuffled": shuffled,
        "mean": translated.mean(0, keepdim=True).expand(n, -1),
        "self-patch": self_patch,
    }


def check_finite(*tensors: Tensor, what: str) -> None:
    if not all(torch.isfinite(t).all() for t in tensors):
        raise UserError(f"NaN or infinite values in {what}; the result would be meaningless, stopping")


def bridge_metadata(
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int
) -> dict:
    return {
        "sender": pair.sender_name,
        "receiver": pair.receiver_name,
        "sender_hook": f"blocks.{sender_layer}.hook_resid_post",
        "receiver_hook": f"blocks.{receiver_layer}.hook_resid_post",
        "target": config.target,
        "position": config.position,
    }


# ---------------------------------------------------------------------------------------------------------
# Aggregation over seeds


def summarize(config: ExperimentConfig, seeds: list[SeedData], conditions: list[Condition]) -> dict:
    """results.json's ``validity``, ``bridge`` and ``conditions`` sections, and the verdict."""
    conditions_out = [summarize_condition(config, seeds, c) for c in conditions]
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


def summarize_condition(config: ExperimentConfig, seeds: list[SeedData], condition: Condition) -> dict:
    out = {
        "name": condition.name,
        "prompt": condition.prompt,
        "vector": condition.vector,
        "mode": condition.mode,
        "alpha": condition.alpha,
        "n": sum(len(s.scores[condition.name].correct) for s in seeds),
        "n_per_seed": [len(s.scores[condition.name].correct) for s in seeds],
    }
    for metric, field in METRICS.items():
        values = [getattr(s.scores[condition.name], field).numpy() for s in seeds]
        baseline = [getattr(s.scores[BASELINE.name], field).numpy() for s in seeds]
        differences = np.concatenate([v - b for v, b in zip(values, baseline, strict=True)])
        ci = paired_bootstrap_ci(
            differences, n_resamples=config.n_bootstrap, seed=zlib.crc32(condition.name.encode())
        )
        key = "gold_logprob" if metric == "logprob" else metric
        out[key] = float(np.mean(np.concatenate(values)))
        out[f"{key}_per_seed"] = [float(v.mean()) for v in values]
        out[f"delta_{metric}"] = float(differences.mean())
        out[f"delta_{metric}_per_seed"] = [
            float((v - b).mean()) for v, b in zip(values, baseline, strict=True)
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
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int
) -> tuple[dict, list[SeedData]]:
    seeds = [run_seed(config, pair, sender_layer, receiver_layer, seed) for seed in range(config.seeds)]
    return summarize(config, seeds, standard_conditions(config.alphas)), seeds
