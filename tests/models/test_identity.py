"""Checkpoint-exact identity: cached states are reused only for the weights that produced them, and a
Hugging Face revision (a Pythia training checkpoint) loads exactly that snapshot, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mi_bridge.config import ExperimentConfig
from mi_bridge.models.loading import load_pair
from mi_bridge.models.sources.hub_cache import resolve_commit
from mi_bridge.models.sources.identity import file_sha256, weights_digest
from mi_bridge.run import main
from tests.conftest import TOKENIZER_FILE, once_per_ci
from tests.hf_cache import build_pythia_cache

pytestmark = pytest.mark.slow

TINY = ["--n-items", "40", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200"]
PYTHIA_14M = ["--pair", "pythia", "--sender", "pythia-14m", "--receiver", "pythia-14m"]
RESULT_KEYS = ("validity", "bridge", "conditions", "verdict")


def results_of(folder: Path) -> dict:
    data = json.loads((folder / "results.json").read_text())
    return {key: data[key] for key in RESULT_KEYS}


def run_cli(args: list[str], hf_home: Path, cache: Path) -> None:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", MI_BRIDGE_CACHE=str(cache))
    done = subprocess.run(
        [sys.executable, "-m", "mi_bridge.run", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def runs_share_one_cache_and_match_a_fresh_one(homes: dict[int, Path], tmp_path: Path) -> Path:
    """One run per Hugging Face cache, both into one activation cache; the second checkpoint's results
    must equal those of a run with no cache at all, and differ from the first's (the weights differ)."""
    shared = tmp_path / "shared"
    for seed, home in homes.items():
        run_cli([*PYTHIA_14M, *TINY, "--out", str(tmp_path / f"shared{seed}")], home, shared)
    run_cli(
        [*PYTHIA_14M, *TINY, "--no-cache", "--out", str(tmp_path / "alone1")], homes[1], tmp_path / "other"
    )
    assert results_of(tmp_path / "shared1") == results_of(tmp_path / "alone1")
    assert results_of(tmp_path / "shared0") != results_of(tmp_path / "shared1")
    return shared


@once_per_ci
def test_two_checkpoints_under_one_name_never_share_cached_activations(tmp_path):
    # Two Hugging Face caches, each holding pythia-14m with different random weights (as after a
    # newer snapshot or on another machine), and one activation cache shared by both.
    homes = {seed: tmp_path / f"hf{seed}" for seed in (0, 1)}
    commits = {
        seed: build_pythia_cache(home, TOKENIZER_FILE, weights_seed=seed).name for seed, home in homes.items()
    }
    assert commits[0] != commits[1]
    shared = runs_share_one_cache_and_match_a_fresh_one(homes, tmp_path)
    recorded = {
        json.loads(p.read_text())["model"]["commit"] for p in (shared / "activations").glob("*/identity.json")
    }
    assert recorded == set(commits.values())
    for seed in (0, 1):
        config = json.loads((tmp_path / f"shared{seed}" / "config.json").read_text())
        snapshot = homes[seed] / "hub" / "models--EleutherAI--pythia-14m" / "snapshots" / commits[seed]
        assert config["extra"]["models"]["receiver"] == {
            "repository": "EleutherAI/pythia-14m",
            "revision": "main",
            "commit": commits[seed],
            "weights_sha256": weights_digest(snapshot),
            "dtype": "float32",
        }
        results = json.loads((tmp_path / f"shared{seed}" / "results.json").read_text())
        assert results["models"]["sender"]["identity"]["commit"] == commits[seed]


@once_per_ci
def test_same_name_and_commit_with_other_weights_never_share_cached_activations(tmp_path):
    """The issue's case: two caches with one name and one commit id (a snapshot edited in place, a copied
    cache) but different weights, and one shared activation cache."""
    homes = {seed: tmp_path / f"hf{seed}" for seed in (0, 1)}
    snapshots = {
        seed: build_pythia_cache(home, TOKENIZER_FILE, weights_seed=seed) for seed, home in homes.items()
    }
    forged = snapshots[1].with_name(snapshots[0].name)  # seed 1's weights under seed 0's commit
    snapshots[1].rename(forged)
    (homes[1] / "hub" / "models--EleutherAI--pythia-14m" / "refs" / "main").write_text(snapshots[0].name)
    shared = runs_share_one_cache_and_match_a_fresh_one(homes, tmp_path)
    recorded = [json.loads(p.read_text())["model"] for p in (shared / "activations").glob("*/identity.json")]
    assert {r["commit"] for r in recorded} == {snapshots[0].name}  # one commit id ...
    assert len({r["weights_sha256"] for r in recorded}) == 2  # ... two checkpoints


def test_a_file_hash_is_computed_once_and_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = file_sha256(weights)
    assert json.loads((tmp_path / "cache" / "hashes.json").read_text())  # kept
    calls = []
    monkeypatch.setattr(
        "mi_bridge.models.sources.identity.sha256_file", lambda p: calls.append(p) or "0" * 64
    )
    assert file_sha256(weights) == first and not calls  # from the cache
    weights.write_bytes(b"b" * 1000)  # replaced in place: another mtime, hashed again
    os.utime(weights, ns=(1, 1))
    assert file_sha256(weights) == "0" * 64 and calls
    blob = tmp_path / "blobs" / ("e" * 64)  # a hub blob is named by its own SHA-256: no read at all
    blob.parent.mkdir()
    blob.write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(blob)
    assert file_sha256(tmp_path / "link.safetensors") == "e" * 64


@pytest.fixture(scope="module")
def two_revisions() -> dict[str, Path]:
    """pythia-31m with two training checkpoints in the cache (two snapshots and their refs, no main)."""
    home = Path(os.environ["HF_HOME"])
    return {
        revision: build_pythia_cache(
            home, TOKENIZER_FILE, "EleutherAI/pythia-31m", weights_seed=seed, revision=revision
        )
        for seed, revision in ((3, "step1000"), (4, "step143000"))
    }


def test_a_revision_loads_exactly_its_snapshot(two_revisions):
    from transformers import AutoModelForCausalLM

    config = ExperimentConfig(
        pair="pythia",
        sender="pythia-31m",
        receiver="pythia-31m",
        sender_revision="step143000",
        receiver_revision="step1000",
    )
    pair = load_pair(config)
    tokens = torch.tensor([[0, 510, 3158, 8516, 30013, 27287, 689, 253, 22658, 4370]])
    for model, exact, revision in (
        (pair.sender, pair.sender_identity, "step143000"),
        (pair.receiver, pair.receiver_identity, "step1000"),
    ):
        snapshot = two_revisions[revision]
        assert exact == {
            "repository": "EleutherAI/pythia-31m",
            "revision": revision,
            "commit": snapshot.name,
            "weights_sha256": weights_digest(snapshot),
            "dtype": "float32",
        }
        hf = AutoModelForCausalLM.from_pretrained(snapshot).eval()
        with torch.no_grad():
            ours, theirs = model(tokens).log_softmax(-1), hf(tokens).logits.log_softmax(-1)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert not torch.equal(pair.sender.W_E, pair.receiver.W_E)


def test_a_commit_is_its_own_revision_and_an_unknown_name_resolves_to_nothing(two_revisions):
    commit = two_revisions["step1000"].name
    assert resolve_commit("EleutherAI/pythia-31m", "step1000") == commit
    assert resolve_commit("EleutherAI/pythia-31m", commit) == commit
    assert resolve_commit("EleutherAI/pythia-31m", "step2000") is None
    assert resolve_commit("EleutherAI/pythia-31m", None) is None  # this cache holds no main


def test_the_report_names_revisions_and_commits(two_revisions, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--pair", "pythia", "--sender", "pythia-31m", "--receiver", "pythia-31m"]
    argv += ["--sender-revision", "step143000", "--receiver-revision", "step1000", *TINY, "--out", str(out)]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    report = (out / "report.md").read_text()
    for revision in ("step143000", "step1000"):
        named = f"revision {revision} = commit {two_revisions[revision].name[:12]}"
        assert named in report and named in shown
    config = json.loads((out / "config.json").read_text())
    assert (config["sender_revision"], config["receiver_revision"]) == ("step143000", "step1000")
    assert config["extra"]["models"]["sender"]["commit"] == two_revisions["step143000"].name


def test_a_repeat_that_loads_another_checkpoint_says_so(tiny_model, capsys):
    from mi_bridge.models.language import toy_language
    from mi_bridge.models.loading import ModelPair, record_identities

    then = {"repository": "EleutherAI/pythia-14m", "revision": "main", "commit": "a" * 40, "dtype": "float32"}
    now = {**then, "commit": "b" * 40}
    pair = ModelPair(tiny_model, tiny_model, "pythia-14m", "pythia-14m", toy_language(), then, now)
    recorded = record_identities(ExperimentConfig(), pair)
    assert recorded.extra["models"] == {"sender": then, "receiver": now}
    assert capsys.readouterr().err == ""  # nothing recorded before: nothing to compare
    record_identities(recorded, ModelPair(tiny_model, tiny_model, "a", "b", toy_language(), then, then))
    warning = capsys.readouterr().err
    assert "receiver was EleutherAI/pythia-14m@main (commit bbbbbbbbbbbb" in warning
    assert "sender" not in warning.split("receiver")[0]  # the sender's checkpoint did not change
