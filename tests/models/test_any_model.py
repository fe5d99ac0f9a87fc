"""Any Hugging Face causal LM that TransformerLens can convert, by hub name or by local folder, offline:
the name need not be in TransformerLens' table, and a folder is identified by its weights' content."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mi_bridge.api import load_model
from mi_bridge.run import main
from mi_bridge.runtime.backend import BACKEND
from tests.conftest import TOKENIZER_FILE
from tests.hf_cache import build_pythia_cache

pytestmark = pytest.mark.slow
TINY = ["--n-items", "40", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200", "--no-site-scan"]


@pytest.fixture(scope="module")
def acme(tmp_path_factory) -> Path:
    """A hub cache with ``acme/tiny-neox`` (a name TransformerLens does not list) and a copy of its snapshot
    as a plain folder."""
    home = Path(os.environ["HF_HOME"])
    snapshot = build_pythia_cache(home, TOKENIZER_FILE, "acme/tiny-neox", weights_seed=3)
    folder = tmp_path_factory.mktemp("local") / "my-model"
    shutil.copytree(snapshot, folder)
    return folder


def test_a_local_folder_is_a_model_with_hugging_faces_logits(acme):
    from transformers import AutoModelForCausalLM

    hooked = load_model(str(acme), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(acme).eval()
    tokens = torch.tensor([hooked.tokenizer.encode("List: Tom Paris. Emily Rome. Tom")])
    with torch.no_grad():
        ours, theirs = hooked(tokens).log_softmax(-1), hf(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_a_folder_and_a_hub_name_outside_the_table_run_offline(acme, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    argv = ["--pair", "hf", "--sender", "acme/tiny-neox", "--receiver", str(acme), *TINY, "--out", str(out)]
    assert main(argv) == 0
    models = json.loads((out / "results.json").read_text())["models"]
    assert models["sender"]["identity"]["repository"] == "acme/tiny-neox"
    assert models["receiver"]["identity"]["folder"] == str(acme.resolve())
    assert models["sender"]["identity"]["weights_sha256"] == models["receiver"]["identity"]["weights_sha256"]
    config = json.loads((out / "config.json").read_text())
    assert (config["sender_revision"], config["receiver_revision"]) == ("main", None)  # a folder has none
    assert main(["--config", str(out / "config.json"), "--out", str(tmp_path / "again")]) == 0  # repeats


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pair", "hf", "--sender", "acme/tiny-neox"], "--pair hf needs --sender and --receiver"),
        (["--pair", "hf", "--sender", "x", "--receiver", "acme/tiny-neox"], "unknown model 'x'"),
        (["--pair", "hf", "--sender", "nobody/nothing", "--receiver", "acme/tiny-neox"], "nobody/nothing"),
    ],
)
def test_bad_model_names_are_one_line(argv, message, acme, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "mi_bridge.run", *argv, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.skipif(
    BACKEND.major >= 4, reason="TransformerLens 4's bridge boots a BERT folder: no refusal to test"
)
def test_a_folder_that_is_not_a_causal_lm_is_one_line(tmp_path, capsys):
    folder = tmp_path / "not-a-causal-lm"
    folder.mkdir()
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "num_hidden_layers": 2,
        "vocab_size": 50304,
    }
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(TOKENIZER_FILE, folder / "tokenizer.json")
    torch.save({}, folder / "pytorch_model.bin")
    argv = ["--pair", "hf", "--sender", str(folder), "--receiver", str(folder), *TINY]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "cannot convert" in capsys.readouterr().err
