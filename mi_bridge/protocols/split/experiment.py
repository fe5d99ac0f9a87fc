"""The transfer experiment of docs/DESIGN.md, per seed: items -> states -> bridge -> conditions, at the
requested site or (``run_site``) another layer; the optional sections (site scan, second site, KV
channel) are ``sections``, which use these functions.

Returns plain data (per-item scores, the bridges); the statistics over seeds are in ``summary.py``, the
site diagnosis in ``diagnosis.py``, the verdict in ``verdict.py``, rendering in ``report.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.bridges.ridge import LinearBridge, fit_report
from mi_bridge.config import ExperimentConfig
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
from mi_bridge.protocols.split.prepare import SeedContext, seed_contexts
from mi_bridge.protocols.split.summary import (  # re-exported: the analyses read them from here
    SITE_CONDITIONS,
    summarize,
    summarize_condition,
    summarize_conditions,
)
from mi_bridge.seeds import SeedOffset

if TYPE_CHECKING:
    from mi_bridge.protocols.split.sections import Section

__all__ = ["SITE_CONDITIONS", "summarize", "summarize_condition", "summarize_conditions"]


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
    sections: dict[str, Any] = field(default_factory=dict)
    """What each optional section computed for this seed, by its key (``sections.base.Section.key``): the
    site scan's scores per receiver layer, the second site's ``SiteRun``; absent where it did not run."""


@dataclass
class SiteRun:
    """One seed's translated conditions and controls at another receiver layer, with its own bridge."""

    layer: int
    conditions: list[Condition]
    scores: dict[str, ItemScores]
    fit: dict[str, dict[str, float]]
    bridge: LinearBridge


def run_seed(
    ctx: SeedContext, sender_layer: int, receiver_layer: int, conditions: Sequence[Condition] | None = None
) -> SeedData:
    """One seed: the bridge fitted and every condition (default: the standard ones) scored per item."""
    config, test = ctx.config, ctx.test
    sender_logits = ctx.sender_logits()[ctx.test_idx]
    site = run_site(
        ctx,
        sender_layer,
        receiver_layer,
        standard_conditions(config.options.alphas) if conditions is None else conditions,
    )
    sender_test = ctx.sender_test  # the sender's logits index the sender's vocabulary
    sender_choice = sender_logits.gather(1, sender_test.bridge_candidates).argmax(-1)
    return SeedData(
        scores=site.scores,
        sender_accuracy=float((sender_choice == test.gold_index).double().mean()),
        sender_greedy_match=float((sender_logits.argmax(-1) == sender_test.bridge_ids).double().mean()),
        fit=site.fit,
        bridge=site.bridge,
        follow_index=test.follow_index,
        probe_correct=sender_probe(ctx, sender_layer),
    )


def run_site(ctx: SeedContext, sender_layer: int, layer: int, conditions: Sequence[Condition]) -> SiteRun:
    """A bridge fitted to receiver ``layer`` and ``conditions`` scored per item with its vectors there."""
    test = ctx.test
    bridge = ctx.fit_bridge(sender_layer, layer)
    fit = fit_report(bridge, *ctx.bridge_data(sender_layer, layer), seed=ctx.seed)
    translated = ctx.translated(bridge, sender_layer)
    scores = evaluate_conditions(
        ctx.pair.receiver,
        ctx.test_prompts(),
        test.answer_candidates,
        test.gold_index,
        layer=layer,
        position=ctx.position(),
        vectors=control_vectors(translated, site_vectors(ctx, layer), ctx.seed),
        conditions=conditions,
        batch_size=ctx.config.batch_size,
        description=f"seed {ctx.seed}: conditions at receiver layer {layer}",
    )
    return SiteRun(layer, list(conditions), scores, fit, bridge)


def evaluate_seeds(
    contexts: Sequence[SeedContext],
    sender_layer: int,
    receiver_layer: int,
    conditions: Sequence[Condition] | None = None,
    sections: Sequence[Section] = (),
) -> list[SeedData]:
    """Every seed at the requested site, each followed by the ``sections``' work on it (the site scan)."""
    seeds = []
    for ctx in contexts:
        seeds.append(run_seed(ctx, sender_layer, receiver_layer, conditions))
        for section in sections:
            section.per_seed(ctx, seeds[-1])
    return seeds


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


def run_experiment(
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int, store: ActivationStore
) -> tuple[dict, list[SeedData]]:
    """The standard conditions and every section the options enable, summarized (without the header
    ``mi_bridge.run`` adds): what a run's results.json holds from the protocol."""
    from mi_bridge.protocols.split.protocol import SplitProtocol  # the protocol imports this module

    protocol, conditions = SplitProtocol(), standard_conditions(config.options.alphas)
    prepared = seed_contexts(config, pair, store), sender_layer, receiver_layer
    evaluated = protocol.evaluate(prepared, conditions)
    return protocol.summarize(config, prepared, evaluated, conditions), evaluated.run.seeds
