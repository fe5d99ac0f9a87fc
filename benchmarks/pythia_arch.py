"""Random-weight Pythia architectures and items for the benchmarks (speed and memory do not depend on
the weights' values)."""

from __future__ import annotations

from pathlib import Path

from mi_bridge.models.task import TaskItems, sample_items
from mi_bridge.runtime.backend import HookedModel
from tests.helpers import load_neox_tokenizer, pythia_language

TOKENIZER = Path(__file__).resolve().parent.parent / "tests" / "data" / "gpt-neox-20b-tokenizer.json"
PYTHIA = {  # (n_layers, d_model, n_heads): the published Pythia architectures
    "pythia-160m": (12, 768, 12),
    "pythia-410m": (24, 1024, 16),
}
TINY = (2, 64, 2)
"""A dry run's stand-in (``benchmarks.gpu_bench --tiny``): the same code path at a size that runs in seconds."""


def pythia_architecture(name: str, device: str = "cpu") -> HookedModel:
    n_layers, d_model, n_heads = PYTHIA.get(name, TINY)
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # TransformerLens 3

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=64,
        d_mlp=4 * d_model,
        d_vocab=50304,
        n_ctx=2048,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=16,
        parallel_attn_mlp=True,
        seed=0,
        device=device,  # benchmarks.bench measures the CPU; benchmarks.gpu_bench passes cuda
    )
    return HookedTransformer(cfg).eval()


def pythia_items(n: int) -> TaskItems:
    """n items of the Pythia prompts (k = 4), tokenized with the real GPT-NeoX tokenizer."""
    if not TOKENIZER.exists():
        raise SystemExit(f"the GPT-NeoX tokenizer is expected at {TOKENIZER}")
    return sample_items(pythia_language(load_neox_tokenizer(TOKENIZER)), k=4, n_items=n, seed=0)
