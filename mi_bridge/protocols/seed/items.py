"""The seed protocol's per-item table (``items.parquet``): one row per condition, run and eval item, with
the generated answer and the paper's three metrics, so that every number of results.json can be
recomputed and each answer read."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mi_bridge.protocols.seed.experiment import PRIMARY_METRIC
from mi_bridge.protocols.seed.metrics import METRICS

COLUMNS = (
    "seed",
    "run",
    "item",
    "layer",
    "sender_layer",
    "condition",
    "bridge",
    *METRICS,
    "correct",
    "gold_logprob",
    "chosen",
    "gold",
)
"""The table's columns, in order: ``correct`` is the primary metric (word-boundary contains), ``chosen``
the generated answer; ``gold_logprob`` is empty (NaN), as answers are scored by generation."""
CATEGORIES = ("condition", "bridge", "gold")


def item_table(
    outcomes: dict[str, dict[str, list[np.ndarray]]],
    predictions: dict[str, list[list[str]]],
    meta: dict[str, dict],
    answers: Sequence[str],
    *,
    sender_layer: int,
    receiver_layer: int,
) -> pd.DataFrame:
    """Every run of every condition (``run_conditions``' outputs), item by item; ``seed`` is the run's
    seed, empty for a condition that draws nothing and runs once."""
    frames = []
    for key, by_metric in outcomes.items():
        for run, seed in enumerate(meta[key]["seeds"]):
            n = len(answers)
            columns = {
                "seed": pd.array([seed] * n, dtype="Int64"),
                "run": np.full(n, run),
                "item": np.arange(n),
                "condition": np.full(n, key, dtype=object),
                "bridge": np.full(n, meta[key]["bridge"], dtype=object),
                **{metric: by_metric[metric][run] == 1 for metric in METRICS},
                "gold_logprob": np.full(n, np.nan),
                "chosen": np.array(predictions[key][run], dtype=object),
                "gold": np.array(answers, dtype=object),
            }
            frames.append(pd.DataFrame(columns))
    frame = pd.concat(frames, ignore_index=True)
    frame["correct"] = frame[PRIMARY_METRIC]
    frame["layer"], frame["sender_layer"] = receiver_layer, sender_layer
    return frame[list(COLUMNS)].astype({name: "category" for name in CATEGORIES})
