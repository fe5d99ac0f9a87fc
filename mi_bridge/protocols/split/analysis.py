"""The split protocol's side of the analyses: their context (pair, layers, seeds, the site diagnosis per
layer), the evaluation helpers the scripts share, and the withholding of a verdict the site cannot support."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

from jaxtyping import Float
from torch import Tensor

from mi_bridge.config import ExperimentConfig
from mi_bridge.core.evaluate import BASELINE, Condition, ItemScores, evaluate_conditions
from mi_bridge.core.store import ActivationStore
from mi_bridge.models.loading import ModelPair
from mi_bridge.protocols.split.experiment import summarize_conditions
from mi_bridge.protocols.split.prepare import SeedContext, seed_contexts
from mi_bridge.report.result import Result, withheld


@dataclass
class AnalysisContext:
    """What every analysis gets: the configuration, the models, the layers and the seeds."""

    config: ExperimentConfig
    pair: ModelPair
    sender_layer: int
    receiver_layer: int
    seeds: list[SeedContext]
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    _sites: dict[int, dict] = field(default_factory=dict, repr=False)

    def site(self, layer: int | None = None) -> dict:
        """The site diagnosis at a receiver layer (default: the configured one), computed once per layer."""
        layer = self.receiver_layer if layer is None else layer
        if layer not in self._sites:
            from mi_bridge.protocols.split.diagnosis import site_section
            from mi_bridge.protocols.split.experiment import SITE_CONDITIONS, site_vectors

            scores = [
                evaluate_on_test(self, seed, site_vectors(seed, layer), SITE_CONDITIONS, layer=layer)
                for seed in self.seeds
            ]
            follow = [seed.test.follow_index for seed in self.seeds]
            summaries = {
                s["name"]: s
                for s in summarize_conditions(self.config.n_bootstrap, scores, SITE_CONDITIONS, follow)
            }
            self._sites[layer] = site_section(summaries, layer)
        return self._sites[layer]


def translated_vectors(seed: SeedContext, sender_layer: int, receiver_layer: int, **bridge_options) -> Tensor:
    """The bridge's output for the seed's held-out items."""
    return seed.translated(seed.fit_bridge(sender_layer, receiver_layer, **bridge_options), sender_layer)


def evaluate_on_test(
    ctx: AnalysisContext,
    seed: SeedContext,
    vectors: dict[str, Float[Tensor, "n_test d_receiver"]],
    conditions: Sequence[Condition],
    *,
    layer: int | None = None,
    site: str | None = None,
) -> dict[str, ItemScores]:
    test = seed.test
    return evaluate_conditions(
        ctx.pair.receiver,
        seed.test_prompts(),
        test.answer_candidates,
        test.gold_index,
        layer=ctx.receiver_layer if layer is None else layer,
        position=seed.position(site),
        vectors=vectors,
        conditions=[BASELINE, *conditions] if BASELINE not in conditions else conditions,
        batch_size=ctx.config.batch_size,
        description=f"seed {seed.seed}: evaluating",
    )


def summarize_all(
    ctx: AnalysisContext, seed_scores: list[dict[str, ItemScores]], conditions: Sequence[Condition]
) -> list[dict]:
    return summarize_conditions(ctx.config.n_bootstrap, seed_scores, conditions)


def qualify_by_site(module: ModuleType, result: Result, site: dict) -> Result:
    """A script that declares ``SITE_DEPENDENT`` judges a cause (norm, direction, alignment) that only a
    pre-lookup site can isolate: elsewhere no sender vector can help at all, so its verdict is withheld."""
    if not getattr(module, "SITE_DEPENDENT", False) or site["class"] == "pre-lookup":
        return result
    return withheld(
        result,
        f"The site is {site['class']} (context-free ceiling {site['context_free']['mean']:+.3f}, follow rate "
        f"{site['follow_rate']['mean']:.3f}): no vector from the sender can help here, so this analysis cannot "
        "separate its cause from that",
        "Rerun at a pre-lookup layer.",
    )


def prepare_split_context(
    config: ExperimentConfig, options: argparse.Namespace, store: ActivationStore | None = None
) -> AnalysisContext:
    from mi_bridge.core.store import default_store
    from mi_bridge.models.loading import load_pair, record_identities, resolve_layers

    pair = load_pair(config)
    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    seeds = seed_contexts(config, pair, store or default_store(not getattr(options, "no_cache", False)))
    return AnalysisContext(config, pair, sender_layer, receiver_layer, seeds, options)
