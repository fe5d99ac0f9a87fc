"""One evaluator for every condition: conditions are values, not loops.

The receiver's layers 0..L are identical for every injection condition of an item batch, so they run
once; positions before the site are identical at every layer, so they run once into a frozen KV cache;
each condition edits the tail residual at the site and runs only the tail through layers L+1..end
(``start_at_layer``), with logits at the answer position only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from mi_bridge import progress
from mi_bridge.capture import answer_logits, batches
from mi_bridge.inject import inject_residual

VECTOR_KINDS = (
    "translated",
    "random",
    "shuffled",
    "mean",
    "self-patch",
    "counterfactual self-patch",
    "context-free self-patch",
)
"""What is injected: the bridge's output, and the controls (docs/DESIGN.md). The last two are the
ceilings for anything the sender could send: the receiver's own state with the answers permuted in its
context (does the site carry the answer?), and its own state for B read against another item's facts
(B without this item's answer)."""


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
    choice: Int[Tensor, " n_items"]
    """Index of the in-context answer with the highest logit (what the receiver answered)."""

    @classmethod
    def concat(cls, parts: Sequence[ItemScores]) -> ItemScores:
        names = ("correct", "gold_logprob", "logit_diff", "choice")
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in names))


def score(
    logits: Float[Tensor, "n d_vocab"], candidates: Int[Tensor, "n k"], gold_index: Int[Tensor, " n"]
) -> ItemScores:
    logits = logits.double()
    candidate_logits = logits.gather(1, candidates)
    gold_logit = candidate_logits.gather(1, gold_index[:, None])[:, 0]
    k = candidates.shape[1]
    distractor_mean = (candidate_logits.sum(1) - gold_logit) / (k - 1)
    choice = candidate_logits.argmax(1)
    return ItemScores(
        correct=(choice == gold_index).double(),
        gold_logprob=logits.log_softmax(-1).gather(1, candidates.gather(1, gold_index[:, None]))[:, 0],
        logit_diff=gold_logit - distractor_mean,
        choice=choice,
    )


class SharedPrefix:
    """The work every condition of one prompt and item batch shares, done once.

    Positions before the injection site are never changed by an injection (attention is causal), so
    their keys and values at every layer go into a frozen TransformerLens KV cache; the tail (site
    onward) runs through layers 0..L once. A condition then edits the tail at layer L and runs only
    the tail through layers L+1.. against the cache: a few positions instead of the whole prompt.
    """

    def __init__(
        self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"], *, layer: int, position: int
    ):
        self.model, self.layer = model, layer
        self.cache = None
        self.offset = position  # index of the site inside the tail
        # Items are never padded: an explicit all-ones mask (with a cache TransformerLens would otherwise
        # derive one from the tokenizer's pad token, which for Pythia is the BOS token).
        no_padding = lambda t: torch.ones_like(t)
        if position > 0:
            self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, tokens.shape[0])
            before = tokens[:, :position]
            model(
                before,
                past_kv_cache=self.cache,
                attention_mask=no_padding(before),
                stop_at_layer=model.cfg.n_layers,
            )
            self.cache.freeze()
            tokens, self.offset = tokens[:, position:], 0
        mask = no_padding(tokens) if self.cache is not None else None
        self.tail = model(tokens, past_kv_cache=self.cache, attention_mask=mask, stop_at_layer=layer + 1)

    def logits(self, residual: Float[Tensor, "batch tail d_model"]) -> Float[Tensor, "batch d_vocab"]:
        """Answer logits after layers L+1.. for an (edited) tail residual."""
        return answer_logits(self.model, residual, start_at_layer=self.layer + 1, past_kv_cache=self.cache)


@torch.no_grad()
def condition_logits(
    model: HookedTransformer,
    prompts: dict[str, Int[Tensor, "n_items pos"]],
    *,
    layer: int,
    position: int,
    vectors: dict[str, Float[Tensor, "n_items d_model"]],
    conditions: Sequence[Condition],
    batch_size: int = 64,
    description: str = "evaluating",
) -> Iterator[tuple[slice, Condition, Float[Tensor, "batch d_vocab"]]]:
    """Answer logits of every condition, batch by batch, with the shared prefix computed once."""
    n_items = next(iter(prompts.values())).shape[0]
    for chunk in progress.track(batches(n_items, batch_size), description):
        shared: dict[str, SharedPrefix] = {}
        for condition in conditions:
            if condition.prompt not in shared:
                shared[condition.prompt] = SharedPrefix(
                    model, prompts[condition.prompt][chunk], layer=layer, position=position
                )
            prefix = shared[condition.prompt]
            residual = prefix.tail
            if condition.is_injection:
                vector = vectors[condition.vector][chunk]
                residual = inject_residual(
                    residual, prefix.offset, vector, condition.mode, condition.alpha or 1.0
                )
            yield chunk, condition, prefix.logits(residual)


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
    parts: dict[str, list[ItemScores]] = {c.name: [] for c in conditions}
    for chunk, condition, logits in condition_logits(
        model,
        prompts,
        layer=layer,
        position=position,
        vectors=vectors,
        conditions=conditions,
        batch_size=batch_size,
        description=description,
    ):
        parts[condition.name].append(score(logits, candidates[chunk], gold_index[chunk]))
    return {name: ItemScores.concat(p) for name, p in parts.items()}
