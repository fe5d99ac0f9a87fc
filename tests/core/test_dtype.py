"""--dtype: the models run in bfloat16 as they do in float32 up to bfloat16's rounding; float16 needs a GPU."""

import json
import os
from pathlib import Path

import pytest
import torch

from mi_bridge.api import load_model as load_pretrained
from mi_bridge.config import ExperimentConfig
from mi_bridge.errors import UserError
from mi_bridge.models.language import toy_language
from mi_bridge.models.loading import load_model
from mi_bridge.models.sources import spec_of
from mi_bridge.models.task import sample_items
from mi_bridge.run import main
from tests.conftest import TOKENIZER_FILE
from tests.helpers import pythia_language
from tests.hf_cache import build_pythia_cache

pytestmark = pytest.mark.slow

# bfloat16 keeps 8 significant bits: each rounding of a weight or an activation is off by at most
# u = 2^-8 (0.4%) relative. A forward pass rounds a few dozen times (embedding, every LayerNorm,
# attention and MLP output, the unembedding); independent roundings partly cancel, and the logits
# measured here differ from float32 by 2-4 u (relative Frobenius norm 0.007-0.015). 0.05 (about 13 u)
# leaves room for that accumulation and still tells one item's logits from another's, even for the
# random-weight Pythia model whose logits vary little between items (relative norm 0.27).
RELATIVE_TOLERANCE = 0.05


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other.float()).norm() / reference.norm())


@pytest.fixture(scope="module")
def pythia_cache():
    build_pythia_cache(Path(os.environ["HF_HOME"]), TOKENIZER_FILE)


def test_bfloat16_pythia_logits_stay_within_rounding_of_float32(pythia_cache):
    full = load_pretrained("pythia-14m", "cpu")
    half = load_pretrained("pythia-14m", "cpu", dtype="bfloat16")
    assert half.cfg.dtype == torch.bfloat16 and half.W_E.dtype == torch.bfloat16
    items = sample_items(pythia_language(full.tokenizer), k=4, n_items=32, seed=0)
    with torch.no_grad():
        reference, other = full(items.oracle_tokens)[:, -1], half(items.oracle_tokens)[:, -1]
    assert relative_error(reference, other) < RELATIVE_TOLERANCE
    assert relative_error(reference, reference.roll(1, 0)) > 4 * RELATIVE_TOLERANCE  # another item's logits


@pytest.mark.parametrize("name", ["toy-sender", "toy-receiver"])
def test_bfloat16_toy_logits_and_choices_match_float32(name):
    (full, exact_full), (half, exact_half) = (
        load_model(spec_of(name, toy=True), "cpu", d) for d in ("float32", "bfloat16")
    )
    assert exact_full["weights_sha256"] == exact_half["weights_sha256"]  # the same checkpoint ...
    assert (exact_full["dtype"], exact_half["dtype"]) == ("float32", "bfloat16")  # ... in another dtype
    items = sample_items(toy_language(), k=4, n_items=128, seed=0)
    tokens, candidates = (
        (items.sender_tokens, items.bridge_candidates)
        if name == "toy-sender"
        else (items.oracle_tokens, items.answer_candidates)
    )
    with torch.no_grad():
        reference, other = full(tokens)[:, -1], half(tokens)[:, -1].float()
    assert relative_error(reference, other) < RELATIVE_TOLERANCE
    # every item where float32 prefers its answer by a margin far above the rounding keeps that answer
    top2 = reference.gather(1, candidates).topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 1.0
    choices = [logits.gather(1, candidates).argmax(1) for logits in (reference, other)]
    assert clear.sum() > 100 and torch.equal(choices[0][clear], choices[1][clear])


def test_bfloat16_gives_the_same_task_validity(tmp_path):
    validity = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        argv = ["--n-items", "80", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200"]
        assert main([*argv, "--dtype", dtype, "--no-cache", "--out", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["models"]["receiver"]["identity"]["dtype"] == dtype
        validity[dtype] = results["validity"]
    full, half = validity["float32"], validity["bfloat16"]
    assert full["valid"] and half["valid"]
    for measure in (
        "sender_hop1_accuracy",
        "receiver_oracle_accuracy",
        "relay_accuracy",
        "baseline_accuracy",
    ):
        # 40 held-out items: each near-tie that rounding flips moves an accuracy by 0.025; allow two
        assert abs(full[measure]["mean"] - half[measure]["mean"]) <= 0.05, measure


def test_float16_on_the_cpu_is_refused():
    with pytest.raises(UserError, match="float16 is not supported on the CPU"):
        ExperimentConfig(dtype="float16", device="cpu")
    with pytest.raises(UserError, match="unknown dtype"):
        ExperimentConfig(dtype="float64")
