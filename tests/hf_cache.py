"""Build a Hugging Face hub cache holding a randomly initialised Pythia-architecture checkpoint.

The config is EleutherAI/pythia-14m's (GPT-NeoX: 6 layers, d_model 128, 4 heads, rotary_pct 0.25,
parallel residual, untied embeddings); the tokenizer is the real GPT-NeoX tokenizer file shipped in tests/data/.
TransformerLens then loads it offline through exactly the code path a user's real download takes.
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

PYTHIA_14M_CONFIG = dict(
    architectures=["GPTNeoXForCausalLM"],
    bos_token_id=0,
    eos_token_id=0,
    hidden_act="gelu",
    hidden_size=128,
    initializer_range=0.02,
    intermediate_size=512,
    layer_norm_eps=1e-5,
    max_position_embeddings=2048,
    model_type="gpt_neox",
    num_attention_heads=4,
    num_hidden_layers=6,
    rotary_emb_base=10000,
    rotary_pct=0.25,
    tie_word_embeddings=False,
    use_cache=True,
    use_parallel_residual=True,
    vocab_size=50304,
)


def build_pythia_cache(
    hf_home: Path,
    tokenizer_file: Path,
    repo_id: str = "EleutherAI/pythia-14m",
    *,
    weights_seed: int = 0,
    revision: str = "main",
    config: dict | None = None,
) -> Path:
    """One snapshot of ``repo_id`` with random weights drawn from ``weights_seed``, and ``refs/<revision>``
    pointing at it. As on the Hub, the snapshot's folder name (its commit) is a hash of its files, so
    different weights get a different commit and the same weights the same one. ``config``: another
    GPT-NeoX config (default pythia-14m's; benchmarks.gpu_bench builds Pythia-160M and -410M). Returns
    the snapshot."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repo) as staging:
        staging = Path(staging)
        torch.manual_seed(weights_seed)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**(config or PYTHIA_14M_CONFIG)))
        model.save_pretrained(staging, safe_serialization=True)
        shutil.copy(tokenizer_file, staging / "tokenizer.json")
        special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        (staging / "special_tokens_map.json").write_text(json.dumps(special))
        config = {"tokenizer_class": "GPTNeoXTokenizerFast", "add_bos_token": False, "model_max_length": 2048}
        (staging / "tokenizer_config.json").write_text(json.dumps(config | special))
        digest = hashlib.sha1()
        for path in sorted(staging.iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
        commit = digest.hexdigest()
        snapshot = repo / "snapshots" / commit
        if not snapshot.exists():
            staging.rename(snapshot)
            staging.mkdir()  # for TemporaryDirectory's cleanup
    (repo / "refs" / revision).write_text(commit)
    return snapshot
