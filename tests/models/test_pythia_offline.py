"""The Pythia path, for real and offline: a locally built HF cache, loaded through the user's code."""

import json
import os
from pathlib import Path

import pytest
import torch

from mi_bridge.api import load_model as load_pretrained
from mi_bridge.core.capture import capture_resid_post
from mi_bridge.errors import UserError
from mi_bridge.models.task import sample_items
from mi_bridge.run import main
from mi_bridge.runtime.backend import BACKEND
from tests.conftest import TOKENIZER_FILE
from tests.helpers import pythia_language
from tests.hf_cache import PYTHIA_14M_CONFIG, build_pythia_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def pythia_cache() -> Path:
    return build_pythia_cache(Path(os.environ["HF_HOME"]), TOKENIZER_FILE)


@pytest.fixture(scope="session")
def pythia(pythia_cache):
    return load_pretrained("pythia-14m", "cpu")


def test_hook_shapes_of_the_loaded_model(pythia):
    cfg = PYTHIA_14M_CONFIG
    assert (pythia.cfg.n_layers, pythia.cfg.d_model, pythia.cfg.d_vocab) == (
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["vocab_size"],
    )
    items = sample_items(pythia_language(pythia.tokenizer), k=3, n_items=6, seed=0)
    capture = capture_resid_post(
        pythia,
        items.oracle_tokens,
        layers=[0, 3, 5],
        positions=[items.slot_position, -1],
        with_answer_logits=True,
    )
    for layer in (0, 3, 5):
        assert capture.states[layer].shape == (6, 2, 128)
    assert capture.answer_logits.shape == (6, 50304)


def test_transformer_lens_logits_match_hugging_face(pythia, pythia_cache):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(pythia_cache).eval()
    items = sample_items(pythia_language(pythia.tokenizer), k=4, n_items=4, seed=1)
    with torch.no_grad():
        ours = pythia(items.sender_tokens).log_softmax(-1)
        theirs = hf(items.sender_tokens).logits.log_softmax(-1)
    # TransformerLens folds LayerNorm and centers the unembedding: equal up to float error as log-probs
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_missing_weights_are_one_clear_error(pythia_cache):
    with pytest.raises(UserError, match="pythia-70m.*HF_HOME"):
        load_pretrained("pythia-70m", "cpu")
    with pytest.raises(UserError, match="unknown model"):
        load_pretrained("no-such-model-xyz", "cpu")


def test_the_cli_runs_the_pythia_pair_end_to_end(pythia_cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--pair",
        "pythia",
        "--sender",
        "pythia-14m",
        "--receiver",
        "pythia-14m",
        "--n-items",
        "40",
        "--seeds",
        "1",
        "--alphas",
        "1",
        "--n-bootstrap",
        "200",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["layers"] == {"sender": 2, "receiver": 2}
    assert results["models"]["receiver"]["d_model"] == 128
    # random weights cannot use the bridge entity: the report must say there is no conclusion
    assert results["validity"]["valid"] is False
    assert results["verdict"].startswith("Result: Task not valid")
    # the new controls ran on the real Pythia path too, and the decomposition stops at the task
    names = {c["name"] for c in results["conditions"]}
    assert {"counterfactual self-patch replace", "context-free self-patch replace"} <= names
    assert results["decomposition"]["first_lost"] == "task"
    assert "Task not valid" in capsys.readouterr().out


def test_the_cli_names_missing_weights_in_one_line(pythia_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--pair", "pythia", "--sender", "pythia-70m", "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pythia-70m" in lines[0] and "HF_HOME" in lines[0]
    assert not out.exists()


def test_the_checks_read_the_model_that_loads(pythia_cache, pythia):
    """The input checks read names, config.json and tokenizer.json without TransformerLens or transformers;
    what they learn must be what the loaded model is: its shape, and its tokenizer's ids for every text
    the prompts are built from."""
    from mi_bridge.config import ExperimentConfig
    from mi_bridge.models.loading import check_pair

    checked = check_pair(ExperimentConfig(pair="pythia", sender="pythia-14m", receiver="pythia-14m"))
    assert (checked.receiver.n_layers, checked.receiver.d_vocab) == (pythia.cfg.n_layers, pythia.cfg.d_vocab)
    loaded = pythia_language(pythia.tokenizer)
    texts = loaded.texts()
    assert len(texts) > 40 and all(checked.language.encode(t) == loaded.encode(t) for t in texts)
    assert checked.language.encode(" lives in Paris.") == loaded.encode(" lives in Paris.")


@pytest.mark.skipif(
    BACKEND.major >= 4,
    reason="under TransformerLens 4, official_name imports TransformerLens to read its table",
)
def test_a_bad_pythia_command_imports_neither_transformer_lens_nor_transformers(pythia_cache, tmp_path):
    """Why a bad Pythia command exits in seconds: in a fresh process, the checks that reject it import
    neither package (TransformerLens takes ~6 s to import here, transformers ~3 s)."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from mi_bridge.run import main\n"
        "code = main(['--pair', 'pythia', '--sender', 'pythia-14m', '--receiver', 'pythia-14m',\n"
        f"             '--receiver-layer', '6', '--out', {str(tmp_path / 'out')!r}])\n"
        "print(sorted(m for m in ('transformer_lens', 'transformers') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pythia-14m has layers 0..5" in done.stderr, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
