"""One evaluator for every condition: conditions are values, not loops.

The receiver's layers 0..L are identical for every injection condition of an item batch, so they run
once (``stop_at_layer=L+1``); each condition edits that residual at the site and runs layers L+1..end
(``start_at_layer``), with logits at the answer position only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_bridge import report
from mi_bridge.capture import answer_logits, batches
from mi_bridge.inject import inject_residual

VECTOR_KINDS = ("translated", "random", "shuffled", "mean", "self-patch")
"""What is injected: the bridge's output, and the controls (DESIGN.md)."""
PROMPTS = ("placeholder", "relay", "oracle")


@dataclass(frozen=True)
class Condition:
    """A prompt, optionally with a vector injected at the site in one mode."""

    name: str
    prompt: str = "placeholder"
    vector: str | None = None
    mode: str | None = None
    alpha: float | None = None

    @property
    def is_injection(self) -> bool:
        return self.vector is not None


BASELINE = Condition("baseline")


def standard_conditions(
    alphas: Sequence[float], vector_kinds: Sequence[str] = VECTOR_KINDS
) -> list[Condition]:
    """Baseline, text relay, oracle, then every vector kind in every mode (additive ones per alpha)."""
    conditions = [BASELINE, Condition("text relay", prompt="relay"), Condition("oracle", prompt="oracle")]
    for kind in vector_kinds:
        conditions += [Condition(f"{kind} add a={a:g}", vector=kind, mode="add", alpha=a) for a in alphas]
        conditions.append(Condition(f"{kind} replace", vector=kind, mode="replace"))
        conditions.append(Condition(f"{kind} rescale", vector=kind, mode="rescale"))
        conditions += [
            Condition(f"{kind} rescale-add a={a:g}", vector=kind, mode="rescale-add", alpha=a) for a in alphas
        ]
    return conditions


@dataclass
class ItemScores:
    """Per-item metrics of one condition."""

    correct: Float[Tensor, " n_items"]
    """1 if the gold answer has the highest logit among the k in-context answers."""
    gold_logprob: Float[Tensor, " n_items"]
    """log p(gold answer) over the full vocabulary."""
    logit_diff: Float[Tensor, " n_items"]
    """Gold logit minus the mean logit of the k-1 in-context distractors."""

    @classmethod
    def concat(cls, parts: Sequence[ItemScores]) -> ItemScores:
        return cls(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("correct", "gold_logprob", "logit_diff"))
        )


def score(
    logits: Float[Tensor, "n d_vocab"], candidates: Int[Tensor, "n k"], gold_index: Int[Tensor, " n"]
) -> ItemScores:
    logits = logits.double()
    candidate_logits = logits.gather(1, candidates)
    gold_logit = candidate_logits.gather(1, gold_index[:, None])[:, 0]
    k = candidates.shape[1]
    distractor_mean = (candidate_logits.sum(1) - gold_logit) / (k - 1)
    return ItemScores(
        correct=(candidate_logits.argmax(1) == gold_index).double(),
        gold_logprob=logits.log_softmax(-1).gather(1, candidates.gather(1, gold_index[:, None]))[:, 0],
        logit_diff=gold_logit - distractor_mean,
    )


@torch.no_grad()
def evaluate_conditions(
    model: HookedTransformer,
    prompts: dict[str, Int[Tensor, "n_items pos"]],
    candidates: Int[Tensor, "n_items k"],
    gold_index: Int[Tensor, " n_items"],
    *,
    layer: int,
    position: int,
    vectors: dict[str, Float[Tensor, "n_items d_model"]],
    conditions: Sequence[Condition],
    batch_size: int = 64,
    description: str = "evaluating",
) -> dict[str, ItemScores]:
    """Scores of every condition on every item. Injections go into ``blocks.{layer}.hook_resid_post``."""
    n_items = candidates.shape[0]
    parts: dict[str, list[ItemScores]] = {c.name: [] for c in conditions}
    for chunk in report.track(batches(n_items, batch_size), description):
        prefixes: dict[str, Tensor] = {}  # residual after block `layer`, once per prompt and batch
        for condition in conditions:
            if condition.prompt not in prefixes:
                prefixes[condition.prompt] = model(prompts[condition.prompt][chunk], stop_at_layer=layer + 1)
            residual = prefixes[condition.prompt]
            if condition.is_injection:
                residual = inject_residual(
                    residual,
                    position,
                    vectors[condition.vector][chunk],
                    condition.mode,
                    condition.alpha or 1.0,
                )
            logits = answer_logits(model, residual, start_at_layer=layer + 1)
            parts[condition.name].append(score(logits, candidates[chunk], gold_index[chunk]))
    return {name: ItemScores.concat(p) for name, p in parts.items()}
