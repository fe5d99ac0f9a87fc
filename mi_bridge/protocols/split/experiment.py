"""The transfer experiment of docs/DESIGN.md, per seed: items -> states -> bridge -> conditions -> statistics.

Returns plain data (dicts of numbers, the bridges); the site diagnosis and verdict are in
``diagnosis.py``, rendering in ``report.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.bridges.ridge import PREDICTORS, LinearBridge, fit_report
from mi_bridge.config import ExperimentConfig, SeedOffset
from mi_bridge.core.controls import derangement, random_like
from mi_bridge.core.evaluate import (
    BASELINE,
    Condition,
    ItemScores,
    evaluate_conditions,
    evaluate_layers,
    standard_conditions,
)
from mi_bridge.core.store import ActivationStore
from mi_bridge.models.loading import ModelPair
from mi_bridge.protocols.split import diagnosis
from mi_bridge.protocols.split.prepare import SeedContext, seed_contexts
from mi_bridge.stats import mean_and_seeds, mean_with_ci, paired_bootstrap_ci, sign_test_p, task_valid

SITE_CONDITIONS = [
    Condition(diagnosis.site_condition_name(k), vector=k, mode=diagnosis.SITE_MODE)
    for k in diagnosis.SITE_KINDS
]

METRICS = {"accuracy": "correct", "logprob": "gold_logprob", "logit_diff": "logit_diff"}


@dataclass
class SeedData:
    """Everything one seed produced: per-item scores, validity numbers, the bridge and its fit."""

    scores: dict[str, ItemScores]
    sender_accuracy: float
    sender_greedy_match: float
    fit: dict[str, dict[str, float]]
    bridge: LinearBridge
    follow_index: Tensor
    """Per held-out item, the index of the C that B lives in under the counterfactual prompt."""
    probe_correct: Tensor
    """Per held-out item, 1 if a linear probe on the sender state picks B among the k in-context B's."""
    site_scan: dict[int, dict[str, ItemScores]]
    """Per receiver layer, the scores of the replace-mode site controls (empty if not scanned)."""


def run_seed(
    ctx: SeedContext, sender_layer: int, receiver_layer: int, conditions: Sequence[Condition] | None = None
) -> SeedData:
    """One seed: the bridge fitted and every condition (default: the standard ones) scored per item."""
    config, pair = ctx.config, ctx.pair
    test = ctx.test
    sender_logits = ctx.sender_logits()[ctx.test_idx]
    bridge = ctx.fit_bridge(sender_layer, receiver_layer)
    fit = fit_report(bridge, *ctx.bridge_data(sender_layer, receiver_layer), seed=ctx.seed)
    translated = ctx.translated(bridge, sender_layer)
    scores = evaluate_conditions(
        pair.receiver,
        ctx.test_prompts(),
        test.answer_candidates,
        test.gold_index,
        layer=receiver_layer,
        position=ctx.position(),
        vectors=control_vectors(translated, site_vectors(ctx, receiver_layer), ctx.seed),
        conditions=standard_conditions(config.alphas) if conditions is None else conditions,
        batch_size=config.batch_size,
        description=f"seed {ctx.seed}: conditions",
    )
    sender_test = ctx.sender_test  # the sender's logits index the sender's vocabulary
    sender_choice = sender_logits.gather(1, sender_test.bridge_candidates).argmax(-1)
    return SeedData(
        scores=scores,
        sender_accuracy=float((sender_choice == test.gold_index).double().mean()),
        sender_greedy_match=float((sender_logits.argmax(-1) == sender_test.bridge_ids).double().mean()),
        fit=fit,
        bridge=bridge,
        follow_index=test.follow_index,
        probe_correct=sender_probe(ctx, sender_layer),
        site_scan=site_scan(ctx) if config.site_scan else {},
    )


def site_vectors(ctx: SeedContext, layer: int) -> dict[str, Float[Tensor, "n_test d_receiver"]]:
    """The receiver's own states at the site for the held-out items: from the oracle prompt
    (self-patch), the counterfactual prompt and the context-free prompt."""
    prompts = {
        "self-patch": "oracle",
        "counterfactual self-patch": "counterfactual",
        "context-free self-patch": "context-free",
    }
    return {
        kind: ctx.receiver_states([layer], prompt)[layer][ctx.test_idx] for kind, prompt in prompts.items()
    }


def site_scan(ctx: SeedContext, layers: list[int] | None = None) -> dict[int, dict[str, ItemScores]]:
    """The replace-mode site controls at every receiver layer: where could any sender vector help?"""
    layers = list(range(ctx.pair.receiver.cfg.n_layers)) if layers is None else layers
    test = ctx.test
    for prompt in ("oracle", "counterfactual", "context-free"):
        ctx.receiver_states(layers, prompt)  # one pass per prompt for every layer
    return evaluate_layers(
        ctx.pair.receiver,
        test.placeholder_tokens,
        test.answer_candidates,
        test.gold_index,
        layers=layers,
        position=ctx.position(),
        vectors={layer: site_vectors(ctx, layer) for layer in layers},
        conditions=[BASELINE, *SITE_CONDITIONS],
        batch_size=ctx.config.batch_size,
        description=f"seed {ctx.seed}: site scan, {len(layers)} layers",
    )


def sender_probe(ctx: SeedContext, sender_layer: int) -> Float[Tensor, " n_test"]:
    """Is B linearly decodable from the sender state? A ridge probe onto one-hot person identities,
    fitted on the bridge's fit items; per held-out item, 1 if it ranks gold B first among the k B's."""
    language = ctx.pair.language
    person_ids = torch.tensor([language.token_id(p) for p in language.persons])
    column = torch.full((int(person_ids.max()) + 1,), -1, dtype=torch.long)
    column[person_ids] = torch.arange(len(person_ids))
    states = ctx.sender_states([sender_layer])[sender_layer]
    targets = torch.nn.functional.one_hot(column[ctx.items.bridge_ids], len(person_ids)).double()
    probe = LinearBridge.fit(states[ctx.fit_idx], targets[ctx.fit_idx], seed=ctx.seed)
    test = ctx.test
    choice = probe(states[ctx.test_idx]).gather(1, column[test.bridge_candidates]).argmax(-1)
    return (choice == test.gold_index).double()


def control_vectors(
    translated: Float[Tensor, "n d"], site: dict[str, Float[Tensor, "n d"]], seed: int
) -> dict[str, Float[Tensor, "n d"]]:
    """The translated vectors and their controls: norm-matched random, shuffled, mean, and the
    receiver's own site states (self-patch, counterfactual, context-free)."""
    n = translated.shape[0]
    generator = torch.Generator().manual_seed(SeedOffset.CONTROLS + seed)
    return {
        "translated": translated,
        "random": random_like(translated, generator),
        "shuffled": translated[derangement(n, generator)],
        "mean": translated.mean(0, keepdim=True).expand(n, -1),
        **site,
    }


# ---------------------------------------------------------------------------------------------------------
# Aggregation over seeds


def summarize(
    config: ExperimentConfig, seeds: list[SeedData], conditions: list[Condition], receiver_layer: int
) -> dict:
    """results.json's ``validity``, ``site``, ``decomposition``, ``bridge`` and ``conditions`` sections."""
    follow = [s.follow_index for s in seeds]
    conditions_out = summarize_conditions(config, [s.scores for s in seeds], conditions, follow)
    by_name = {c["name"]: c for c in conditions_out}
    oracle = by_name["oracle"]
    gap, gap_ci = oracle["delta_accuracy"], oracle["delta_accuracy_ci"]
    valid = task_valid(gap, gap_ci, config.min_oracle_gap)
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
    probe = mean_with_ci(
        torch.cat([s.probe_correct for s in seeds]).numpy(), n_resamples=config.n_bootstrap, seed=1
    )
    site = diagnosis.site_section(by_name, receiver_layer)
    results = {
        "validity": validity,
        "site": site,
        "site_scan": summarize_site_scan(config, seeds),
        "sender_probe": probe,
        "decomposition": diagnosis.decomposition(validity, conditions_out, probe, site_class=site["class"]),
        "bridge": bridge,
        "conditions": conditions_out,
    }
    results["verdict"] = diagnosis.verdict(results)
    return results


def summarize_site_scan(config: ExperimentConfig, seeds: list[SeedData]) -> list[dict]:
    """The site section at every scanned receiver layer (the lookup phase of the receiver)."""
    follow = [s.follow_index for s in seeds]
    rows = []
    for layer in seeds[0].site_scan:
        scores = [s.site_scan[layer] for s in seeds]
        summaries = {s["name"]: s for s in summarize_conditions(config, scores, SITE_CONDITIONS, follow)}
        rows.append(diagnosis.site_section(summaries, layer))
    return rows


def summarize_conditions(
    config: ExperimentConfig,
    seed_scores: list[dict[str, ItemScores]],
    conditions: Sequence[Condition],
    follow_index: list[Tensor] | None = None,
) -> list[dict]:
    """``summarize_condition`` for each condition, in order, on ``torch.get_num_threads()`` threads.

    The bootstrap resampling dominates and numpy releases the GIL while it draws and averages, so
    threads share it across cores; every condition seeds its own generator, so the numbers do not
    depend on the thread count (measured: a 73-condition summary, 5 s on one thread, ~2 s on two)."""
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        return list(pool.map(lambda c: summarize_condition(config, seed_scores, c, follow_index), conditions))


def summarize_condition(
    config: ExperimentConfig,
    seed_scores: list[dict[str, ItemScores]],
    condition: Condition,
    follow_index: list[Tensor] | None = None,
    baseline: str = BASELINE.name,
) -> dict:
    """Means, per-seed values and paired deltas vs ``baseline`` with bootstrap CIs (items pooled over seeds).

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
        out[f"delta_{metric}_p"] = sign_test_p(differences)  # for the Holm correction over a family
    if condition.vector == "counterfactual self-patch" and follow_index is not None:
        followed = torch.cat(
            [(s[condition.name].choice == f).double() for s, f in zip(seed_scores, follow_index, strict=True)]
        )
        out["follow_rate"] = mean_with_ci(followed.numpy(), n_resamples=config.n_bootstrap, seed=2)
    return out


def run_experiment(
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int, store: ActivationStore
) -> tuple[dict, list[SeedData]]:
    seeds = [run_seed(ctx, sender_layer, receiver_layer) for ctx in seed_contexts(config, pair, store)]
    return summarize(config, seeds, standard_conditions(config.alphas), receiver_layer), seeds
