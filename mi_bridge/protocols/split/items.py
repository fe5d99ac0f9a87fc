"""The split protocol's per-item table (``items.parquet``): the run's conditions at the receiver layer
(``part`` = ``run``), then each section's parts (``sections``); one row per seed, held-out item, layer and
condition, with the item's scores and the answer the receiver chose, so that any statistic of the run can
be recomputed and its failures looked at item by item."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Int
from torch import Tensor

from mi_bridge.core.evaluate import Condition, ItemScores
from mi_bridge.protocols.split.prepare import SeedContext

COLUMNS = (
    "part",
    "seed",
    "item",
    "item_index",
    "layer",
    "sender_layer",
    "position",
    "condition",
    "prompt",
    "vector",
    "mode",
    "alpha",
    "correct",
    "gold_logprob",
    "logit_diff",
    "margin",
    "choice",
    "chosen",
    "gold",
    "bridge_entity",
    "follow_index",
)
"""The table's columns, in order (README: "The run folder")."""
CATEGORIES = ("part", "position", "condition", "prompt", "vector", "mode", "chosen", "gold", "bridge_entity")
"""Text columns stored as categories: a few distinct values repeated over many rows."""


@dataclass
class SeedItems:
    """What names one seed's held-out items: their index among the seed's sampled items, candidates and
    gold answer, and the tokenizer's decoding (taken from the seed's context, which is not kept)."""

    seed: int
    item_index: Int[Tensor, " n_test"]
    candidates: Int[Tensor, "n_test k"]
    gold_index: Int[Tensor, " n_test"]
    follow_index: Int[Tensor, " n_test"]
    bridge_ids: Int[Tensor, " n_test"]
    decode: Callable[[list[int]], str]

    @classmethod
    def of(cls, ctx: SeedContext) -> SeedItems:
        test = ctx.test
        return cls(
            seed=ctx.seed,
            item_index=ctx.test_idx,
            candidates=test.answer_candidates,
            gold_index=test.gold_index,
            follow_index=test.follow_index,
            bridge_ids=test.bridge_ids,
            decode=ctx.pair.language.decode,
        )

    def texts(self, ids: Int[Tensor, " n"]) -> np.ndarray:
        """Each token id's text, decoding every distinct id once."""
        words = {i: self.decode([i]) for i in ids.unique().tolist()}
        return np.array([words[i] for i in ids.tolist()], dtype=object)


def condition_rows(items: SeedItems, condition: Condition, scores: ItemScores) -> dict[str, np.ndarray]:
    """One seed's rows of one condition."""
    n = len(scores.correct)
    chosen = items.candidates.gather(1, scores.choice[:, None])[:, 0]
    gold = items.candidates.gather(1, items.gold_index[:, None])[:, 0]
    return {
        "seed": np.full(n, items.seed),
        "item": np.arange(n),
        "item_index": items.item_index.numpy(),
        "condition": np.full(n, condition.name, dtype=object),
        "prompt": np.full(n, condition.prompt, dtype=object),
        "vector": np.full(n, condition.vector, dtype=object),
        "mode": np.full(n, condition.mode, dtype=object),
        "alpha": np.full(n, np.nan if condition.alpha is None else condition.alpha),
        "correct": scores.correct.numpy() == 1,
        "gold_logprob": scores.gold_logprob.numpy(),
        "logit_diff": scores.logit_diff.numpy(),
        "margin": np.full(n, np.nan) if scores.margin is None else scores.margin.numpy(),
        "choice": scores.choice.numpy(),
        "follow_index": items.follow_index.numpy(),
        "chosen": items.texts(chosen),
        "gold": items.texts(gold),
        "bridge_entity": items.texts(items.bridge_ids),
    }


def layer_table(
    items: Sequence[SeedItems],
    seed_scores: Sequence[dict[str, ItemScores]],
    conditions: Sequence[Condition],
    **constants,
) -> pd.DataFrame:
    """Every seed's rows of every condition (seed-major, conditions in order), with ``constants`` (part,
    layers, position) as columns."""
    parts = [
        condition_rows(seed, condition, scores[condition.name])
        for seed, scores in zip(items, seed_scores, strict=True)
        for condition in conditions
    ]
    columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    n = len(columns["item"])
    return pd.DataFrame({**{k: np.full(n, v, dtype=object) for k, v in constants.items()}, **columns})


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """A table of ``layer_table`` parts in the columns' order and types (layers as integers, text as
    categories)."""
    frame = frame.reset_index(drop=True)
    for name in ("sender_layer", "layer"):
        frame[name] = frame[name].astype("int64")
    return frame[list(COLUMNS)].astype({name: "category" for name in CATEGORIES})
