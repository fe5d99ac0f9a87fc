"""The KV channel inside a split-protocol run (``--kv-channel``): a section of results.json, report.md and
figure.png, per-item rows in items.parquet at both sites, its trained sources saved beside the residual
bridges, and the residual numbers exactly those of the same run without it. Without the flag the record,
and so the run folder's name, is what it was before the channel existed."""

import json

import pandas as pd
import pytest

from mi_bridge.bridges.base import load_bridge
from mi_bridge.bridges.kv_options import KVOptions
from mi_bridge.config import ExperimentConfig, current_record
from mi_bridge.errors import UserError
from mi_bridge.protocols.split.kv_channel import (
    EXACT,
    FULL_DEPTH,
    LINEAR,
    READS_F,
    SENDER_READING,
    kv_conditions,
)
from mi_bridge.protocols.split.kv_summary import KV_VERDICTS
from mi_bridge.report.result import TRANSFER_VERDICTS
from mi_bridge.run import main
from mi_bridge.run_folder import default_name, resolved

TINY = ["--n-items", "40", "--seeds", "2", "--n-bootstrap", "200", "--alphas", "1"]
KV = ["--kv-channel", "--kv-epochs", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv-runs")
    assert main([*TINY, "--out", str(root / "plain")]) == 0
    assert main([*TINY, *KV, "--out", str(root / "kv")]) == 0
    return root / "plain", root / "kv"


def results_of(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_the_kv_channel_is_a_section_of_the_run_at_both_sites(runs):
    _, folder = runs
    results = results_of(folder)
    kv = results["kv_channel"]
    assert kv["verdict"] in TRANSFER_VERDICTS and kv["explanation"].startswith("Task validity:")
    assert kv["source"] == "prompt" and kv["ceiling"] == "receiver reads P"
    assert set(kv["versus_prefix"]) == set(SENDER_READING) == set(kv["holm_p_versus_prefix"])
    sites = [results["site"]["layer"], results["second_site"]["layer"]]
    assert [int(layer) for layer in kv["sites"]] == sites  # the requested site, then the second site
    for layer, site in kv["sites"].items():
        assert site["band"] == f"after L{layer}" and list(site["conditions"]) == list(kv_conditions("prompt"))
        assert site["residual"]["vector"] == "translated"  # the best residual bridge at that site
    items = pd.read_parquet(folder / "items.parquet")
    parts = set(items["part"].astype(str))
    assert {f"kv channel, {FULL_DEPTH}", *(f"kv channel, after L{layer}" for layer in sites)} <= parts
    n_test = kv["conditions"]["oracle"]["n"]
    kv_rows = items[items["part"].astype(str).str.startswith("kv channel")]
    assert (kv_rows.groupby(["part", "condition"], observed=True).size() == n_test).all()
    report = (folder / "report.md").read_text()
    assert "KV channel (the second channel)" in report and "KV channel per site" in report
    assert (folder / "figure.png").stat().st_size > 0
    for kind in ("kv-linear", "kv-fuser", "kv-prefix"):  # the map, the fuser, the learned prefix
        assert load_bridge(folder / "bridge" / kind / "seed0").kind == kind
    record = json.loads((folder / "config.json").read_text())
    assert record["kv"]["channel"] is True and record["kv"]["epochs"] == 2


@pytest.mark.slow
def test_the_kv_channel_leaves_the_residual_numbers_exactly_as_they_were(runs):
    plain, kv = (results_of(folder) for folder in runs)
    for section in ("validity", "site", "site_scan", "decomposition", "bridge", "conditions", "second_site"):
        assert plain[section] == kv[section], section
    for part in ("result", "why"):
        assert plain["verdict_parts"][part] == kv["verdict_parts"][part]
    # the suggested commands repeat the run with the channel; the residual analyses do not take it
    commands = [step["command"] for step in kv["verdict_parts"]["next"]]
    assert all(("--kv-" in c) == c.startswith("python -m mi_bridge.run") for c in commands), commands
    before, after = (pd.read_parquet(folder / "items.parquet") for folder in runs)
    residual = after[~after["part"].astype(str).str.startswith("kv channel")]
    pd.testing.assert_frame_equal(before, residual.reset_index(drop=True), check_categorical=False)


def test_without_the_channel_the_record_and_folder_name_are_as_before_it():
    record = ExperimentConfig().to_dict()
    assert not any(key.startswith("kv") for key in record)
    # the default toy run's folder name, as written before the KV options existed (90534c7)
    assert default_name(resolved(ExperimentConfig(), 2, 1), "slot-relay-slot") == PINNED
    with_channel = default_name(
        resolved(ExperimentConfig(options={"kv": {"channel": True}}), 2, 1), "slot-relay-slot"
    )
    with_rank = ExperimentConfig(options={"kv": {"channel": True, "rank": 4}})
    assert len({PINNED, with_channel, default_name(resolved(with_rank, 2, 1), "slot-relay-slot")}) == 3


PINNED = "toy-toy-sender-toy-receiver-L2-L1-slot-relay-slot-692995c6"


def test_the_kv_options_are_one_object_by_flag_record_and_old_flat_record():
    """``--kv-*`` flags, config.json's ``kv`` object and a record written when they were flat
    (``kv_rank``) give the same options; the record is the object, and a replay writes it again."""
    by_flag = ExperimentConfig.from_dict({"kv_channel": True, "kv_layer_map": "shift:-1", "kv_epochs": 3})
    record = by_flag.to_dict()
    assert record["kv"] == {
        "channel": True,
        "source": "prompt",
        "loss": "candidates",
        "layer_map": "shift:-1",
        "rank": 8,
        "epochs": 3,
        "lr": 0.003,
        "train_batch": 16,
        "patience": 3,
    }
    assert list(record).index("kv") == list(record).index("second_site") + 1  # where the flat keys were
    old = {}  # as config.json held them before: flat, where the object is now
    for key, value in record.items():
        old |= {f"kv_{k}": v for k, v in value.items()} if key == "kv" else {key: value}
    migrated, dropped = current_record(old)
    assert migrated == record and list(migrated) == list(record) and dropped == []
    assert ExperimentConfig.from_dict(migrated).options == by_flag.options
    assert ExperimentConfig.from_dict(current_record(record)[0]).options == by_flag.options
    # a record written before the source and loss were options read P and trained on the full vocabulary
    earlier = {k: v for k, v in record["kv"].items() if k not in ("source", "loss")}
    assert current_record(record | {"kv": earlier})[0]["kv"]["loss"] == "vocabulary"
    # a config written now by hand, which names one of them, takes the defaults for the other
    by_hand = current_record({"kv_channel": True, "kv_source": "facts"})[0]
    assert ExperimentConfig.from_dict(by_hand).options.kv.loss == "candidates"
    # a flag overrides the recorded object; a record without KV keys gets the defaults
    assert ExperimentConfig.from_dict(record | {"kv_rank": 4}).options.kv.rank == 4
    assert (
        ExperimentConfig.from_dict(current_record(ExperimentConfig().to_dict())[0]).options.kv == KVOptions()
    )
    # under the seed protocol, an old record's KV keys are another protocol's: dropped, named if not default
    kept, dropped = current_record(old | {"protocol": "seed"})
    assert dropped == ["kv_channel", "kv_layer_map", "kv_epochs"] and not any(
        k.startswith("kv") for k in kept
    )
    with pytest.raises(UserError, match="--kv-channel applies to --protocol split, not seed"):
        ExperimentConfig.from_dict({"pair": "pythia", "protocol": "seed", "kv_channel": True})
    with pytest.raises(UserError, match="unknown options of this protocol: kv_depth"):
        ExperimentConfig(options={"kv": {"depth": 2}})
    with pytest.raises(UserError, match="--kv-rank must be positive"):
        ExperimentConfig(options={"kv_rank": 0})


def test_a_site_at_the_last_layer_has_no_band_and_a_self_pair_is_one_checkpoint():
    from mi_bridge.protocols.split.sections.kv import one_model, site_bands

    assert site_bands([1, 0], 4) == [1, 0] and site_bands([3, 1], 4) == [1]
    same = ExperimentConfig(pair="smollm2")
    assert one_model(same)
    assert not one_model(same.with_values(sender_revision="step1000"))  # two checkpoints of one model
    assert not one_model(ExperimentConfig())  # the toy pair: two models


def test_a_kv_option_without_the_channel_is_refused_in_one_line(tmp_path, capsys):
    assert main(["--kv-rank", "4", "--out", str(tmp_path / "run")]) == 2
    assert "--kv-rank applies to the KV channel: add --kv-channel" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_channel_needs_one_tokenizer_and_its_options_need_the_channel():
    with_channel = ExperimentConfig(options={"kv": {"channel": True}})
    assert "--kv-source prompt maps the sender's cache" in with_channel.options.one_tokenizer_reason(
        with_channel
    )
    facts = ExperimentConfig(options={"kv": {"channel": True, "source": "facts"}})
    assert facts.options.one_tokenizer_reason(facts) is None  # aligned by text span
    with pytest.raises(UserError, match="unknown --kv-source 'context'; choose one of prompt, facts"):
        ExperimentConfig(options={"kv": {"channel": True, "source": "context"}})
    assert ExperimentConfig().options.one_tokenizer_reason(ExperimentConfig()) is None
    with pytest.raises(UserError, match="--kv-epochs applies to the KV channel: add --kv-channel"):
        ExperimentConfig(options={"kv_epochs": 3}).options.check_run()
    ExperimentConfig(options={"kv": {"channel": True, "epochs": 3}}).options.check_run()


# ---------------------------------------------------------------------------------------------------------
# --kv-source facts: context transfer, whose ceiling is the oracle by construction


FACTS = [*KV, "--kv-source", "facts"]


@pytest.fixture(scope="module")
def facts_run(tmp_path_factory, runs):
    folder = tmp_path_factory.mktemp("kv-facts") / "run"
    assert main([*TINY, *FACTS, "--no-site-scan", "--out", str(folder)]) == 0
    return folder


@pytest.mark.slow
def test_under_facts_the_ceiling_is_the_oracle_and_every_control_runs(facts_run, runs):
    results = results_of(facts_run)
    kv = results["kv_channel"]
    assert kv["source"] == "facts" and kv["ceiling"] == READS_F and kv["verdict"] in KV_VERDICTS
    assert list(kv["conditions"]) == ["oracle", *kv_conditions("facts")]
    assert "text relay" not in kv["conditions"]  # the receiver reads its query alone: nothing to relay
    for seed in kv["max_logit_difference"]:  # the receiver's cache of F, then its query, is the oracle prompt
        assert seed[f"oracle vs {READS_F}"] <= EXACT
    oracle, ceiling = kv["conditions"]["oracle"], kv["conditions"][READS_F]
    assert kv["ceiling_share_of_oracle"]["accuracy"] == pytest.approx(1.0)
    assert ceiling["delta_accuracy_per_seed"] == oracle["delta_accuracy_per_seed"]
    for name in (*SENDER_READING, "learned prefix"):
        assert "delta_accuracy_p_seeds" in kv["conditions"][name]
    for fit in kv["fits"]:
        for log in fit["training"].values():
            assert log["loss"] == "candidates" and 0 <= log["train_accuracy"] <= 1
            assert len(log["heldout_accuracy"]) == len(log["fit_loss"]) + 1
    report = (facts_run / "report.md").read_text()
    assert "share of ceiling" in report and "held-out acc" in report
    # the residual numbers are those of the same run with the prompt source (and with no channel)
    plain = results_of(runs[0])
    for section in ("validity", "site", "decomposition", "bridge", "conditions"):
        assert plain[section] == results[section], section


@pytest.mark.slow
def test_a_self_pair_under_the_identity_map_is_the_positive_control(tmp_path, monkeypatch):
    """The toy receiver paired with itself: the identity map delivers its own cache of F, which must give
    the ceiling's logits; a map off by a little stops the run in one line, writing nothing."""
    self_pair = [*TINY, *FACTS, "--sender", "toy-receiver", "--kv-layer-map", "identity", "--no-site-scan"]
    assert main([*self_pair, "--out", str(tmp_path / "ok")]) == 0
    kv = results_of(tmp_path / "ok")["kv_channel"]
    assert kv["self_reference"] and kv["verdict"] == "positive control"
    assert all(seed[f"{LINEAR} vs {READS_F}"] <= EXACT for seed in kv["max_logit_difference"])
    assert kv["share_of_ceiling"][LINEAR]["accuracy"] == pytest.approx(1.0)

    from mi_bridge.bridges.kv import KVLinearBridge

    exact = KVLinearBridge.__call__
    monkeypatch.setattr(
        KVLinearBridge, "__call__", lambda self, s: [(k * 1.01, v) for k, v in exact(self, s)]
    )
    assert main([*self_pair, "--out", str(tmp_path / "off")]) == 3
    assert not (tmp_path / "off").exists()
