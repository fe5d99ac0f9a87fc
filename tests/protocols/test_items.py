"""The per-item table (``items.parquet``): every run writes it, and the run's statistics can be recomputed
from it exactly."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mi_bridge.config import ExperimentConfig
from mi_bridge.core.evaluate import Condition, ItemScores
from mi_bridge.protocols.seed import items as seed_items
from mi_bridge.protocols.seed.metrics import METRICS
from mi_bridge.protocols.split.experiment import summarize_condition
from mi_bridge.protocols.split.items import COLUMNS
from mi_bridge.run import main

TINY = ["--n-items", "60", "--seeds", "2", "--alphas", "0.5,1", "--n-bootstrap", "200"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main([*TINY, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_run_writes_a_table_of_every_seed_item_and_condition(tiny_run):
    out, results = tiny_run
    table = pd.read_parquet(out / "items.parquet")
    assert tuple(table.columns) == COLUMNS
    run = table[table.part == "run"]
    names = [c["name"] for c in results["conditions"]]
    assert list(run.condition.astype(str).unique()) == names
    assert len(run) == len(names) * 2 * 30  # 30 held-out items per seed
    assert set(run.layer) == {1} and set(run.sender_layer) == {2} and set(run.seed) == {0, 1}
    scan = table[table.part == "site scan"]
    assert sorted(set(scan.layer)) == [0, 1, 2, 3] and len(scan) == 4 * 4 * 2 * 30
    assert (run.correct == (run.chosen.astype(str) == run.gold.astype(str))).all()  # the chosen answer
    accuracy = run.groupby("condition", observed=True).correct.mean()
    for summary in results["conditions"]:
        assert accuracy[summary["name"]] == pytest.approx(summary["accuracy"], abs=1e-12)


def seed_scores(rows: pd.DataFrame) -> ItemScores:
    rows = rows.sort_values("item")
    column = lambda name, dtype: torch.tensor(rows[name].to_numpy(), dtype=dtype)
    return ItemScores(
        correct=column("correct", torch.float64),
        gold_logprob=column("gold_logprob", torch.float64),
        logit_diff=column("logit_diff", torch.float64),
        choice=column("choice", torch.long),
        margin=column("margin", torch.float64),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["translated rescale", "random add a=0.5", "counterfactual self-patch replace"]
)
def test_a_conditions_delta_and_ci_recomputed_from_the_table_match_results_json(tiny_run, name):
    """The table holds every number the statistics read: rebuilt from it alone, the code's own
    summary of a condition (``summarize_condition``: Δ, bootstrap CI, sign test, follow rate) is
    results.json's, bit for bit."""
    out, results = tiny_run
    config = ExperimentConfig.from_dict(json.loads((out / "config.json").read_text()))
    run = pd.read_parquet(out / "items.parquet").query("part == 'run'")
    summary = next(c for c in results["conditions"] if c["name"] == name)
    condition = Condition(name, summary["prompt"], summary["vector"], summary["mode"], summary["alpha"])
    by_seed = [rows for _, rows in run.groupby("seed")]
    scores = [{n: seed_scores(rows[rows.condition == n]) for n in (name, "baseline")} for rows in by_seed]
    follow = [
        torch.tensor(rows[rows.condition == name].sort_values("item").follow_index.to_numpy())
        for rows in by_seed
    ]
    recomputed = summarize_condition(config.n_bootstrap, scores, condition, follow)
    for key in (
        "delta_accuracy",
        "delta_accuracy_ci",
        "delta_logprob",
        "delta_logprob_ci",
        "delta_accuracy_p",
    ):
        assert recomputed[key] == summary[key], key
    if "follow_rate" in summary:
        assert recomputed["follow_rate"] == summary["follow_rate"]
    # and the Δ itself is plain arithmetic on the table's columns
    differences = np.concatenate(
        [
            rows[rows.condition == name].sort_values("item").correct.to_numpy(float)
            - rows[rows.condition == "baseline"].sort_values("item").correct.to_numpy(float)
            for rows in by_seed
        ]
    )
    assert differences.mean() == summary["delta_accuracy"]


def test_the_seed_protocol_table_has_one_row_per_run_and_item():
    hits = lambda *values: np.array(values, float)
    outcomes = {
        "no injection": {m: [hits(1, 0, 1)] for m in METRICS},
        "replace": {m: [hits(0, 0, 1), hits(1, 1, 0)] for m in METRICS},
    }
    predictions = {
        "no injection": [["Paris", "x", "Rome"]],
        "replace": [["a", "b", "Rome"], ["Paris", "y", "z"]],
    }
    meta = {
        "no injection": {"condition": "no injection", "bridge": None, "seeds": [None]},
        "replace": {"condition": "replace", "bridge": "sgd-l2", "seeds": [7, 8]},
    }
    table = seed_items.item_table(
        outcomes, predictions, meta, ["Paris", "Oslo", "Rome"], sender_layer=4, receiver_layer=5
    )
    assert tuple(table.columns) == seed_items.COLUMNS and len(table) == 9
    assert table.seed.isna().sum() == 3 and list(table.seed.dropna()) == [7, 7, 7, 8, 8, 8]
    assert list(table.correct) == [True, False, True, False, False, True, True, True, False]
    assert list(table.chosen) == ["Paris", "x", "Rome", "a", "b", "Rome", "Paris", "y", "z"]
    assert set(table.layer) == {5} and set(table.sender_layer) == {4} and table.gold_logprob.isna().all()
