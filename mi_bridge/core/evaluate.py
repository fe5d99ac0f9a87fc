"""One evaluator for every condition: conditions are values, not loops.

The receiver's layers 0..L are identical for every injection condition of an item batch, so they run
once; positions before the site are identical at every layer, so they run once into a frozen KV cache;
each condition edits the tail residual at the site and runs only the tail through layers L+1..end
(``start_at_layer``), with logits at the answer position only. Prompts that differ only from the
site on (placeholder, relay, oracle) share the cache. Conditions of one prompt share a tail pass:
their edited tails are stacked along the batch against the one frozen cache, about 2,048 token rows per
pass (efficient matmuls, a working set near the CPU's cache), within a memory budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.core import progress
from mi_bridge.core.capture import answer_logits, batches

# Re-exported: the conditions are the values this evaluator takes (``mi_bridge.core.conditions``).
from mi_bridge.core.conditions import BASELINE as BASELINE
from mi_bridge.core.conditions import VECTOR_KINDS as VECTOR_KINDS
from mi_bridge.core.conditions import Condition
from mi_bridge.core.conditions import select_conditions as select_conditions
from mi_bridge.core.conditions import standard_conditions as standard_conditions
from mi_bridge.core.device import model_device
from mi_bridge.core.inject import inject_residual
from mi_bridge.runtime.backend import HookedModel, residual_at
from mi_bridge.runtime.kv_cache import KVCache, prefix_cache


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
    margin: Float[Tensor, " n_items"] | None = None
    """Highest minus second-highest logit among the k in-context answers: how close the choice was (a
    choice within float error of a tie may differ between devices; tests/test_gpu.py counts them)."""

    @classmethod
    def concat(cls, parts: Sequence[ItemScores]) -> ItemScores:
        names = [f.name for f in fields(cls)]
        joined = lambda name: (
            None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])
        )
        return cls(*(joined(name) for name in names))


def score(
    logits: Float[Tensor, "n d_vocab"], candidates: Int[Tensor, "n k"], gold_index: Int[Tensor, " n"]
) -> ItemScores:
    """Per-item metrics, computed on the logits' device and returned on the CPU (statistics live there)."""
    logits = logits.double()
    candidates, gold_index = candidates.to(logits.device), gold_index.to(logits.device)
    candidate_logits = logits.gather(1, candidates)
    gold_logit = candidate_logits.gather(1, gold_index[:, None])[:, 0]
    k = candidates.shape[1]
    distractor_mean = (candidate_logits.sum(1) - gold_logit) / (k - 1)
    choice = candidate_logits.argmax(1)
    top_two = candidate_logits.topk(2, dim=1).values
    return ItemScores(
        correct=(choice == gold_index).double().cpu(),
        gold_logprob=logits.log_softmax(-1).gather(1, candidates.gather(1, gold_index[:, None]))[:, 0].cpu(),
        logit_diff=(gold_logit - distractor_mean).cpu(),
        choice=choice.cpu(),
        margin=(top_two[:, 0] - top_two[:, 1]).cpu(),
    )


TAIL_BUDGET_BYTES = 1 << 30
"""Memory cap of one stacked tail pass: peak memory stays bounded as item batches grow."""

MATMUL_ROWS = 2048
"""Token rows a stacked tail pass aims at: enough for a large model's matmuls to run near their rate
(Pythia-410M arch, 12 conditions of 32 items: one pass per condition, 96 rows each, took 1.5x as
long as one pass of all 12), few enough that a small model's pass stays near the CPU's cache (toy
receiver: the 71 placeholder conditions of a 64-item batch in one pass, 9,088 rows, took 1.9x as
long as passes of 15)."""


def pass_sizes(
    n_conditions: int,
    condition_bytes: int,
    rows_per_condition: int,
    budget_bytes: int,
    matmul_rows: int = MATMUL_ROWS,
) -> list[int]:
    """How many conditions each tail pass stacks: about ``matmul_rows`` token rows per pass, never more
    than ``budget_bytes`` allows (but at least one condition), spread evenly (sizes differ by at most
    one, so no pass is left nearly empty)."""
    if n_conditions <= 0:
        return []
    wanted = -(-matmul_rows // max(1, rows_per_condition))
    per_pass = max(1, min(wanted, budget_bytes // max(1, condition_bytes), n_conditions))
    passes = -(-n_conditions // per_pass)
    size, larger = divmod(n_conditions, passes)
    return [size + 1] * larger + [size] * (passes - larger)


class SharedPrefix:
    """The work every condition of one prompt and item batch shares, done once.

    Positions before the injection site are never changed by an injection (attention is causal), so
    their keys and values at every layer go into a frozen KV cache (``runtime.kv_cache``, on both
    backends); the tail (site onward) runs through layers 0..L once. A condition then edits the tail at
    layer L and runs only the tail through layers L+1.. against the cache: a few positions instead of
    the whole prompt.
    """

    def __init__(
        self,
        model: HookedModel,
        tokens: Int[Tensor, "batch pos"],
        *,
        layer: int,
        position: int,
        cache: KVCache | None = None,
    ):
        """``cache``: the frozen cache of another prompt whose tokens before ``position`` are the same
        (see ``shares_prefix``); it is reused instead of recomputed."""
        self.model, self.layer = model, layer
        self.before = tokens[:, :position]
        self.cache = cache
        self.offset = position if position <= 0 else 0  # the site inside the tail (which starts there)
        if position > 0:
            if self.cache is None:
                self.cache = prefix_cache(model, self.before)
            tokens = tokens[:, position:]
        cached = {} if self.cache is None else self.cache.forward_kwargs(tokens.shape[1], from_residual=False)
        self.tail = residual_at(model, tokens, stop_at_layer=layer + 1, **cached)

    def shares_prefix(self, tokens: Int[Tensor, "batch pos"]) -> bool:
        """Whether ``tokens`` agree with this prompt before the site (placeholder, relay and oracle
        prompts differ only from the slot on), so that the cache serves them too."""
        before = tokens[:, : self.before.shape[1]]
        return (
            self.cache is not None and before.shape == self.before.shape and torch.equal(before, self.before)
        )

    def logits(self, residual: Float[Tensor, "rows tail d_model"]) -> Float[Tensor, "rows d_vocab"]:
        """Answer logits after layers L+1.. for edited tails: one condition (rows = batch) or several
        stacked condition-major (rows c·batch .. (c+1)·batch - 1 are condition c)."""
        copies = residual.shape[0] // self.tail.shape[0]
        cache = None if self.cache is None else self.cache.repeated(copies)
        return answer_logits(self.model, residual, start_at_layer=self.layer + 1, cache=cache)

    def condition_bytes(self) -> int:
        """Rough peak working memory of one condition in a tail pass (one row per item, one layer at a
        time): keys (cached + tail, then rotated) and values over the context, attention scores and
        pattern, MLP activations, the residual stream, and the answer logits."""
        cfg, (batch, tail) = self.model.cfg, self.tail.shape[:2]
        context = tail + (self.cache.length if self.cache is not None else 0)
        floats = (
            3 * context * cfg.n_heads * cfg.d_head
            + 3 * cfg.n_heads * tail * context
            + 3 * tail * cfg.d_mlp
            + 8 * tail * cfg.d_model
            + 2 * cfg.d_vocab
        )
        return floats * self.tail.element_size() * batch


@torch.no_grad()
def condition_logits(
    model: HookedModel,
    prompts: dict[str, Int[Tensor, "n_items pos"]],
    *,
    layer: int,
    position: int,
    vectors: dict[str, Float[Tensor, "n_items d_model"]],
    conditions: Sequence[Condition],
    batch_size: int = 64,
    description: str = "evaluating",
    tail_budget_bytes: int = TAIL_BUDGET_BYTES,
    matmul_rows: int = MATMUL_ROWS,
) -> Iterator[tuple[slice, Condition, Float[Tensor, "batch d_vocab"]]]:
    """Answer logits of every condition, batch by batch: the shared prefix once (prompts that agree
    before the site share it), then each prompt's conditions' tails stacked into passes of about
    ``matmul_rows`` token rows within ``tail_budget_bytes`` (``pass_sizes``). Yields batch by batch,
    grouped by prompt (not in the order of ``conditions`` within a batch)."""
    n_items = next(iter(prompts.values())).shape[0]
    by_prompt: dict[str, list[Condition]] = {}
    for condition in conditions:
        by_prompt.setdefault(condition.prompt, []).append(condition)
    device = model_device(model)
    for chunk in progress.track(batches(n_items, batch_size), description):
        prefix = None
        for prompt, group in by_prompt.items():
            tokens = prompts[prompt][chunk].to(device)  # prompts stay on the CPU; one batch moves
            cache = prefix.cache if prefix is not None and prefix.shares_prefix(tokens) else None
            prefix = None  # the previous prompt's cache is freed first, unless this prompt reuses it
            prefix = SharedPrefix(model, tokens, layer=layer, position=position, cache=cache)
            yield from _stacked_logits(prefix, group, vectors, chunk, tail_budget_bytes, matmul_rows)


def _stacked_logits(
    prefix: SharedPrefix,
    conditions: Sequence[Condition],
    vectors: dict[str, Tensor],
    chunk: slice,
    tail_budget_bytes: int,
    matmul_rows: int,
) -> Iterator[tuple[slice, Condition, Float[Tensor, "batch d_vocab"]]]:
    """One prompt's conditions: edited tails stacked, as many per pass as ``pass_sizes`` says."""
    sizes = pass_sizes(
        len(conditions),
        prefix.condition_bytes(),
        rows_per_condition=prefix.tail.shape[0] * prefix.tail.shape[1],
        budget_bytes=tail_budget_bytes,
        matmul_rows=matmul_rows,
    )
    start = 0
    for size in sizes:
        stacked = conditions[start : start + size]
        start += size
        residual = torch.cat([_edited_tail(prefix, c, vectors, chunk) for c in stacked])
        logits = prefix.logits(residual)
        yield from ((chunk, c, rows) for c, rows in zip(stacked, logits.split(len(prefix.tail)), strict=True))


def _edited_tail(
    prefix: SharedPrefix, condition: Condition, vectors: dict[str, Tensor], chunk: slice
) -> Float[Tensor, "batch tail d_model"]:
    if not condition.is_injection:
        return prefix.tail
    vector = vectors[condition.vector][chunk]
    return inject_residual(prefix.tail, prefix.offset, vector, condition.mode, condition.alpha or 1.0)


@torch.no_grad()
def evaluate_conditions(
    model: HookedModel,
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


@torch.no_grad()
def evaluate_layers(
    model: HookedModel,
    tokens: Int[Tensor, "n_items pos"],
    candidates: Int[Tensor, "n_items k"],
    gold_index: Int[Tensor, " n_items"],
    *,
    layers: Sequence[int],
    position: int,
    vectors: dict[int, dict[str, Float[Tensor, "n_items d_model"]]],
    conditions: Sequence[Condition],
    batch_size: int = 64,
    description: str = "evaluating layers",
    tail_budget_bytes: int = TAIL_BUDGET_BYTES,
    matmul_rows: int = MATMUL_ROWS,
) -> dict[int, dict[str, ItemScores]]:
    """``evaluate_conditions`` of one prompt at several injection layers (``vectors`` per layer). The
    frozen cache of the positions before the site does not depend on the layer, so it is computed once
    per batch and serves every layer; the scores are those of one ``evaluate_conditions`` per layer."""
    parts = {layer: {c.name: [] for c in conditions} for layer in layers}
    device = model_device(model)
    for chunk in progress.track(batches(tokens.shape[0], batch_size), description):
        cache, batch = None, tokens[chunk].to(device)
        for layer in layers:
            prefix = SharedPrefix(model, batch, layer=layer, position=position, cache=cache)
            cache = prefix.cache
            for _, condition, logits in _stacked_logits(
                prefix, conditions, vectors[layer], chunk, tail_budget_bytes, matmul_rows
            ):
                parts[layer][condition.name].append(score(logits, candidates[chunk], gold_index[chunk]))
    return {
        layer: {name: ItemScores.concat(p) for name, p in by_name.items()} for layer, by_name in parts.items()
    }
