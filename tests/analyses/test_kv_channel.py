"""The KV-cache channel as an analysis (``python -m mi_bridge.analyses kv_channel``): every condition,
control and ceiling on the same items, per-item rows, attention mass per layer, and a verdict that
reads the learned prefix, the ceiling and the self-pair trap. The plumbing itself (delivery, gate,
planted maps, batching) is tested in tests/models/test_kv_delivery.py and tests/bridges/test_kv.py."""

import json

import pandas as pd
import pytest

from mi_bridge.analyses.runner import main
from mi_bridge.protocols.split.kv_channel import (
    CEILINGS,
    FUSER,
    KV_CONDITIONS,
    LINEAR,
    PLAIN_PROMPTS,
    PREFIX,
    SENDER_READING,
)
from mi_bridge.protocols.split.kv_summary import judge
from mi_bridge.report.result import TRANSFER_VERDICTS

TINY = ["--n-items", "40", "--seeds", "2", "--n-bootstrap", "200", "--alphas", "1", "--kv-epochs", "2"]


@pytest.mark.slow
def test_the_kv_channel_runs_every_condition_on_the_same_items(tmp_path):
    assert main(["kv_channel", *TINY, "--out", str(tmp_path)]) == 0
    out = tmp_path / "kv_channel"
    results = json.loads((out / "results.json").read_text())
    analysis = results["analysis"]
    assert analysis["verdict"] in TRANSFER_VERDICTS
    assert analysis["explanation"].startswith("Task validity:")  # validity before any effect
    data = analysis["data"]
    assert list(data["conditions"]) == ["text relay", "oracle", *KV_CONDITIONS]
    assert data["best_residual"]["name"].startswith("translated")
    n_test = data["conditions"]["oracle"]["n"]
    assert n_test == 2 * 20 and all(c["n"] == n_test for c in data["conditions"].values())
    (site,) = data["sites"].values()  # the configured site: the same sources read after it only
    assert site["band"].startswith("after L") and list(site["conditions"]) == list(KV_CONDITIONS)
    assert set(data["versus_prefix"]) == set(SENDER_READING) == set(data["holm_p_versus_prefix"])
    n_layers = len(data["fits"][0]["sender_layers"])
    assert all(len(mass) == n_layers for mass in data["attention_mass"].values())
    assert all(0 <= m <= 1 for mass in data["attention_mass"].values() for m in mass)
    assert len(data["cpu_minutes_per_seed"]) == 2
    for fit in data["fits"]:
        assert set(fit["training"]) == {FUSER, PREFIX}
        assert fit["training"][PREFIX]["n_trainable"] > 0
    items = pd.read_parquet(out / "items.parquet")
    expected = {*PLAIN_PROMPTS, *KV_CONDITIONS}
    assert expected <= set(items["condition"].astype(str))
    per_part = items.groupby(["part", "condition"], observed=True).size()
    assert (per_part == n_test).all()  # one row per item and seed
    assert "analysis" in results and "items" not in analysis["data"]  # the table is beside, not inside
    assert "learned prefix" in (out / "report.md").read_text()


def test_the_kv_channel_is_refused_in_one_line_where_it_is_not_built(capsys, tmp_path):
    assert main(["kv_channel", "--pair", "pythia", "--protocol", "seed", "--out", str(tmp_path / "s")]) == 2
    assert "kv_channel does not apply under --protocol seed" in capsys.readouterr().err
    assert main(["kv_channel", "--kv-layer-map", "sideways", "--out", str(tmp_path / "m")]) == 2
    assert "--kv-layer-map: unknown layer map 'sideways'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def summary(delta: float, low: float, high: float, p: float = 0.5) -> dict:
    return {"delta_accuracy": delta, "delta_accuracy_ci": [low, high], "delta_accuracy_p": p, "n": 100}


HELPS, NOTHING = summary(0.2, 0.1, 0.3, 1e-4), summary(0.0, -0.1, 0.1)


def verdict(*, ceiling=HELPS, fuser=HELPS, prefix=NOTHING, beyond_prefix=HELPS, self_reference=False):
    kv = {name: NOTHING for name in KV_CONDITIONS} | {"oracle": summary(0.6, 0.5, 0.7)}
    kv |= {CEILINGS[1]: ceiling, FUSER: fuser, PREFIX: prefix}
    section = {
        "conditions": kv,
        "versus_prefix": {LINEAR: NOTHING, FUSER: beyond_prefix},
        "versus_shuffled": {LINEAR: NOTHING, FUSER: HELPS},
        "holm_p_versus_prefix": {LINEAR: 1.0, FUSER: 2e-4 if beyond_prefix is HELPS else 1.0},
        "layer_map": "shift:2",
        "self_reference": self_reference,
        "sites": {
            "3": {
                "band": "after L3",
                "conditions": kv,
                "versus_prefix": {FUSER: NOTHING},
                "residual": {"name": "translated replace"} | NOTHING,
            }
        },
        "heldout_normalized_cosine": {"keys": 0.9, "values": 0.8},
        "cpu_minutes_per_seed": [1.0],
    }
    return judge(section, 0.25)


def test_the_sender_helps_only_beyond_the_learned_prefix():
    assert verdict()[0] == "transfer helps"
    # the fuser helps against the baseline, but a prefix with no sender input does as well
    label, text = verdict(prefix=HELPS, beyond_prefix=NOTHING)
    assert label == "no transfer" and "adaptation, not a message" in text


def test_no_ceiling_or_a_self_pair_reference_withholds_the_verdict():
    label, text = verdict(ceiling=NOTHING)
    assert label == "untestable here" and "no cache of P could" in text
    label, text = verdict(self_reference=True)
    assert label == "untestable here" and "the reference, not a channel" in text
