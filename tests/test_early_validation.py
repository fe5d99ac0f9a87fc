"""Bad input is rejected before any model is loaded or trained: each case runs on a cold cache (an empty
MI_BRIDGE_CACHE, where loading the toy pair would mean training it), fails with one line and exit code 2
within a generous time bound, and loading a model fails the test outright."""

import json
import os
import time
from pathlib import Path

import pytest

from mi_bridge.run import main

from .conftest import TOKENIZER_FILE
from .hf_cache import build_pythia_cache

BOUND_SECONDS = 20  # the checks take well under a second; the margin is for a shared, loaded machine


def _pythia(*args: str) -> list[str]:
    return ["--pair", "pythia", "--sender", "pythia-14m", "--receiver", "pythia-14m", *args]


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    a_file, bad_config = tmp_path / "a_file", tmp_path / "bad.json"
    return {
        # the README's list
        "unknown pair": (["--pair", "gpt"], "invalid choice"),
        "unknown toy model": (["--sender", "toy-giant"], "unknown toy model"),
        "unknown pretrained model": (_pythia("--sender", "no-such-model-xyz"), "unknown model"),
        "toy layer out of range": (["--receiver-layer", "999"], "out of range"),
        "toy sender layer out of range": (["--sender-layer", "3"], "toy-sender has layers 0..2"),
        "pythia layer out of range": (_pythia("--receiver-layer", "6"), "pythia-14m has layers 0..5"),
        "toy k beyond the pool": (["--k", "1000"], "entity pool"),
        "pythia k beyond the pool": (_pythia("--k", "30"), "entity pool"),
        "too few items": (["--n-items", "10"], "too few items"),
        "unwritable out": (["--out", str(a_file / "run")], "not writable"),
        "malformed config": (["--config", str(bad_config)], "wrong type"),
        # models, checkpoints, tokenizers, precision
        "weights not in the cache": (_pythia("--sender", "pythia-70m"), "HF_HOME"),
        "config without weights": (_pythia("--sender", "pythia-410m-deduped"), "weights for"),
        "revision not in the cache": (_pythia("--sender-revision", "step1"), "revision step1"),
        "revision of a toy model": (["--sender-revision", "step1"], "toy pair"),
        "tokenizers differ, same-input target": (
            _pythia("--receiver", "pythia-160m-seed1", "--target", "same-input"),
            "tokenize differently",
        ),
        "float16 on the CPU": (["--dtype", "float16"], "float16"),
        "unknown dtype": (["--dtype", "float8"], "invalid choice"),
    }


@pytest.fixture(scope="module")
def offline_models(tmp_path_factory):
    """pythia-14m in full; pythia-410m-deduped's config without weights; pythia-160m-seed1 with a
    tokenizer that differs in one token."""
    home = Path(os.environ["HF_HOME"])
    build_pythia_cache(home, TOKENIZER_FILE)
    no_weights = build_pythia_cache(home, TOKENIZER_FILE, "EleutherAI/pythia-410m-deduped")
    (no_weights / "model.safetensors").unlink()
    tokenizer = json.loads(TOKENIZER_FILE.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["ĠParis"], vocab["ĠLondon"] = vocab["ĠLondon"], vocab["ĠParis"]  # two ids swapped
    other = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    other.write_text(json.dumps(tokenizer))
    build_pythia_cache(home, other, "EleutherAI/pythia-160m-seed1")


CASES = list(_cases(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_before_any_model_loads(case, offline_models, tmp_path, capsys, monkeypatch):
    def loading(*args, **kwargs):
        raise AssertionError(f"{case}: a model was loaded before the input was checked")

    monkeypatch.setattr("mi_bridge.models.loading.load_model", loading)
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(cold))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.json").write_text(json.dumps({"k": "four"}))
    argv, expected = _cases(tmp_path)[case]
    out = tmp_path / "out"
    if "--out" not in argv:
        argv = [*argv, "--out", str(out)]

    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start

    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    assert seconds < BOUND_SECONDS, f"{case} took {seconds:.1f} s"
    assert not out.exists() and list(cold.iterdir()) == []  # nothing written, nothing trained or cached
