"""Every path on a CUDA GPU (``pytest -m gpu``; skipped, with the reason shown, where CUDA is absent).

- the toy run on CUDA gives the CPU run's scientific answer: the same site classes and verdict label, and
  per item the same answers, except where the top two answers' logits lie within float error of each
  other (those items are counted and printed);
- the GPT-NeoX path on CUDA: hooked logits and one injection (a self-patch, which is the same state in
  TransformerLens' folded basis and in Hugging Face's) against plain Hugging Face on the same device;
- bfloat16 against float32 on the same checkpoint, on CUDA, within the rounding tolerance of
  tests/core/test_dtype.py;
- every entry point at a tiny size with ``--device cuda``.

``benchmarks/gpu_check.sh`` runs this file on a GPU machine (with ``-s``, so the counts are printed).
"""

import json
import os
from pathlib import Path

import pytest
import torch

from mi_bridge.config import ExperimentConfig
from tests.core.test_dtype import RELATIVE_TOLERANCE, relative_error

from .conftest import TOKENIZER_FILE
from .hf_cache import build_pythia_cache

CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False here"
)
pytestmark = [pytest.mark.slow]
GPU = [pytest.mark.gpu, CUDA]
ON_DEVICES = ["cpu", pytest.param("cuda", marks=GPU)]
"""Checks that hold on the CPU too run there as well, so their logic is tested on every machine."""

FLOAT_ERROR = 1e-3
"""Logits (toy: magnitude ~10) computed in float32 on two devices differ by about 1e-5 (other summation
orders); a choice whose top two logits lie closer than this may differ between devices."""
TINY = ["--n-items", "40", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200", "--no-site-scan"]
TINY_PYTHIA = ["--pair", "pythia", "--sender", "pythia-14m", "--receiver", "pythia-14m"]
TINY_SEED = [*TINY_PYTHIA, "--protocol", "seed", "--n-items", "3", "--n-fit", "3", "--seeds", "1"]
TINY_SEED += ["--max-new-tokens", "2", "--bridge", "both", "--n-bootstrap", "200"]


@pytest.fixture(scope="module")
def pythia_cache() -> Path:
    return build_pythia_cache(Path(os.environ["HF_HOME"]), TOKENIZER_FILE)


# ---------------------------------------------------------------------------------------------------------
# The toy run: the same scientific answer on CUDA as on the CPU


@pytest.fixture(scope="module")
def toy_runs() -> dict:
    """The default toy run's summary and per-seed scores on each device (nothing written)."""
    from mi_bridge.core.store import ActivationStore
    from mi_bridge.models.loading import load_pair, resolve_layers
    from mi_bridge.protocols.split.experiment import run_experiment

    runs = {}
    for device in ("cpu", "cuda"):
        config = ExperimentConfig(device=device)
        pair = load_pair(config)
        runs[device] = run_experiment(config, pair, *resolve_layers(config, pair), ActivationStore(None))
    return runs


@pytest.mark.gpu
@CUDA
def test_the_toy_run_on_cuda_gives_the_cpu_runs_answer(toy_runs):
    from mi_bridge.protocols.split.diagnosis import verdict_label

    (cpu, cpu_seeds), (cuda, cuda_seeds) = toy_runs["cpu"], toy_runs["cuda"]
    assert cuda["site"]["class"] == cpu["site"]["class"]
    assert [s["class"] for s in cuda["site_scan"]] == [s["class"] for s in cpu["site_scan"]]
    assert cuda["validity"]["valid"] == cpu["validity"]["valid"]
    assert verdict_label(cuda) == verdict_label(cpu)
    flips, near_ties, n = 0, 0, 0
    for a, b in zip(cpu_seeds, cuda_seeds, strict=True):
        for name, scores in a.scores.items():
            other = b.scores[name]
            differ = scores.choice != other.choice
            close = torch.minimum(scores.margin, other.margin) < FLOAT_ERROR
            assert not (differ & ~close).any(), f"{name}: an answer differs by more than float error"
            flips, near_ties, n = flips + int(differ.sum()), near_ties + int(close.sum()), n + len(differ)
    print(f"\ntoy run, CUDA vs CPU: {flips} of {n} item answers differ, all among {near_ties} near-ties")
    cpu_by_name = {c["name"]: c for c in cpu["conditions"]}
    for condition in cuda["conditions"]:  # accuracy moves by the flipped items only
        assert abs(condition["accuracy"] - cpu_by_name[condition["name"]]["accuracy"]) <= flips / 1000


# ---------------------------------------------------------------------------------------------------------
# GPT-NeoX against plain Hugging Face, and bfloat16 against float32


def _hf_self_patch_logits(hf, tokens, donor_tokens, layer: int, position: int) -> torch.Tensor:
    """Hugging Face log-probs at the last position with block ``layer``'s output at ``position``
    replaced by its output for ``donor_tokens`` (a self-patch)."""
    with torch.no_grad():
        donor = hf(donor_tokens, output_hidden_states=True).hidden_states[layer + 1][:, position]

    def patch(module, inputs, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, position] = donor
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = hf.gpt_neox.layers[layer].register_forward_hook(patch)
    try:
        with torch.no_grad():
            return hf(tokens).logits[:, -1].log_softmax(-1)
    finally:
        handle.remove()


@pytest.mark.parametrize("device", ON_DEVICES)
def test_gpt_neox_logits_and_a_self_patch_match_hugging_face(pythia_cache, device):
    from transformers import AutoModelForCausalLM

    from mi_bridge.api import load_model as load_pretrained
    from mi_bridge.core.capture import capture_resid_post
    from mi_bridge.core.inject import run_with_injection
    from mi_bridge.models.task import sample_items
    from tests.helpers import pythia_language

    ours = load_pretrained("pythia-14m", device)
    hf = AutoModelForCausalLM.from_pretrained(pythia_cache).to(device).eval()
    items = sample_items(pythia_language(ours.tokenizer), k=4, n_items=8, seed=1)
    tokens, donor = items.placeholder_tokens.to(device), items.oracle_tokens.to(device)
    with torch.no_grad():
        theirs = hf(tokens).logits.log_softmax(-1)
        torch.testing.assert_close(ours(tokens).log_softmax(-1), theirs, rtol=0, atol=1e-4)
    layer, slot = 2, items.slot_position
    own = capture_resid_post(ours, items.oracle_tokens, layers=[layer], positions=[slot]).states[layer][:, 0]
    assert own.device.type == "cpu"  # captured states live on the CPU
    with torch.no_grad():
        patched = run_with_injection(ours, tokens, layer=layer, position=slot, vector=own, mode="replace")
    expected = _hf_self_patch_logits(hf, tokens, donor, layer, slot)
    torch.testing.assert_close(patched[:, -1].log_softmax(-1), expected, rtol=0, atol=1e-4)
    assert not torch.allclose(expected, theirs[:, -1], atol=1e-3)  # the patch changed the answer


@pytest.mark.gpu
@CUDA
def test_bfloat16_stays_within_rounding_of_float32_on_cuda(pythia_cache):
    from mi_bridge.api import load_model as load_pretrained
    from mi_bridge.models.task import sample_items
    from tests.helpers import pythia_language

    full = load_pretrained("pythia-14m", "cuda")
    half = load_pretrained("pythia-14m", "cuda", dtype="bfloat16")
    items = sample_items(pythia_language(full.tokenizer), k=4, n_items=32, seed=0)
    with torch.no_grad():
        reference, other = full(items.oracle_tokens)[:, -1], half(items.oracle_tokens)[:, -1]
    error = relative_error(reference, other)
    print(f"\nbfloat16 vs float32 on CUDA (pythia-14m arch): relative logit error {error:.4f}")
    assert error < RELATIVE_TOLERANCE
    assert relative_error(reference, reference.roll(1, 0)) > 4 * RELATIVE_TOLERANCE


# ---------------------------------------------------------------------------------------------------------
# Every entry point with --device cuda, at a tiny size


def _recorded_on_cuda(folder: Path) -> None:
    results = json.loads((folder / "results.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert results["device"]["device"].startswith("cuda") and results["device"]["gpu_name"]
    assert config["extra"]["device"] == results["device"]


@pytest.mark.gpu
@CUDA
def test_the_split_run_on_cuda(tmp_path):
    from mi_bridge.run import main

    assert main([*TINY, "--device", "cuda", "--out", str(tmp_path / "run")]) == 0
    _recorded_on_cuda(tmp_path / "run")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_seed_protocol_on_cuda(pythia_cache, tmp_path, dtype):
    from mi_bridge.run import main

    assert main([*TINY_SEED, "--device", "cuda", "--dtype", dtype, "--out", str(tmp_path / "run")]) == 0
    _recorded_on_cuda(tmp_path / "run")


@pytest.mark.gpu
@CUDA
def test_every_analysis_on_cuda(tmp_path):
    """Every analysis, the usability-trained bridge and the learning curve included."""
    from mi_bridge.analyses.runner import ORDER, main

    argv = ["all", "--n-items", "60", "--seeds", "1", "--n-bootstrap", "200", "--alphas", "1"]
    argv += ["--scales", "0.5,1,2", "--train-steps", "20", "--curve-sizes", "16,32", "--device", "cuda"]
    assert main([*argv, "--out", str(tmp_path / "all")]) == 0
    for name in ORDER:
        _recorded_on_cuda(tmp_path / "all" / name)


@pytest.mark.gpu
@CUDA
def test_every_seed_protocol_analysis_on_cuda(pythia_cache, tmp_path):
    from mi_bridge.analyses.runner import main

    argv = ["all", *TINY_SEED[:-4], "--n-bootstrap", "200", "--scales", "0.5,1", "--device", "cuda"]
    assert main([*argv, "--out", str(tmp_path / "all")]) == 0


@pytest.mark.gpu
@CUDA
def test_the_sweep_in_process_on_cuda(tmp_path):
    from mi_bridge import sweep

    out = tmp_path / "sweep"
    assert (
        sweep.main([*TINY, "--receiver-layer", "0-1", "--device", "cuda", "--local", "--out", str(out)]) == 0
    )
    assert len(json.loads((out / "sweep.json").read_text())["cells"]) == 2


@pytest.mark.gpu
@CUDA
def test_the_sweep_on_ray_gives_each_actor_a_gpu(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from mi_bridge import sweep

    out = tmp_path / "sweep"
    assert sweep.main([*TINY, "--receiver-layer", "0-1", "--device", "cuda", "--out", str(out)]) == 0


@pytest.mark.gpu
@CUDA
def test_the_cache_command_after_a_cuda_run(tmp_path, monkeypatch, capsys):
    from mi_bridge.cache import main as cache_main
    from mi_bridge.run import main

    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    assert main([*TINY, "--device", "cuda", "--out", str(tmp_path / "run")]) == 0
    assert cache_main(["info"]) == 0
    assert "activations:" in capsys.readouterr().err
