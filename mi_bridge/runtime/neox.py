"""The toy pair's weights (``HookedTransformer`` keys, TransformerLens 3's Pythia layout) as a Hugging Face
GPT-NeoX model, which needs no TransformerLens: how the TransformerLens 4 backend runs the toy pair
(``TL4.from_hooked_state_dict``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # transformers loads with the first model, after every input check
    from transformers import GPTNeoXForCausalLM


def neox_from_hooked(
    state_dict: dict[str, Tensor],
    *,
    n_heads: int,
    n_ctx: int,
    rotary_dim: int | None = None,
    rotary_base: float = 10000.0,
    eps: float = 1e-5,
) -> GPTNeoXForCausalLM:
    """A Hugging Face GPT-NeoX model computing what the unprocessed ``HookedTransformer`` of
    ``state_dict`` computes: rotary (GPT-NeoX's rotate-half), parallel attention and MLP, two LayerNorms
    per block, GELU, untied embeddings (TransformerLens 3's Pythia layout, which the toy pair uses).

    One difference from a standard checkpoint: HookedTransformer has an unembedding bias ``b_U`` and
    GPT-NeoX none, so ``lm_head`` gets one here (``save_pretrained`` writes it, ``from_pretrained``
    drops it). Needs no TransformerLens: the toy pair's shipped weights load under TL 4 this way."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    d_vocab, d_model = state_dict["embed.W_E"].shape
    n_layers = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("blocks."))
    d_head = state_dict["blocks.0.attn.W_Q"].shape[-1]
    config = GPTNeoXConfig(
        vocab_size=d_vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=state_dict["blocks.0.mlp.W_in"].shape[1],
        hidden_act="gelu",
        max_position_embeddings=n_ctx,
        layer_norm_eps=eps,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        rotary_pct=(rotary_dim or d_head) / d_head,
        rotary_emb_base=rotary_base,
        bos_token_id=None,
        eos_token_id=None,
        architectures=["GPTNeoXForCausalLM"],
    )
    model = GPTNeoXForCausalLM(config)
    model.lm_head = torch.nn.Linear(d_model, d_vocab, bias=True)
    weights = {
        "gpt_neox.embed_in.weight": state_dict["embed.W_E"],
        "gpt_neox.final_layer_norm.weight": state_dict["ln_final.w"],
        "gpt_neox.final_layer_norm.bias": state_dict["ln_final.b"],
        "lm_head.weight": state_dict["unembed.W_U"].T,
        "lm_head.bias": state_dict["unembed.b_U"],
    }
    for layer in range(n_layers):
        tl, hf = f"blocks.{layer}.", f"gpt_neox.layers.{layer}."
        # GPT-NeoX's fused QKV rows are head-major: [q_h, k_h, v_h] for each head h
        qkv_w = torch.stack([state_dict[f"{tl}attn.W_{x}"].transpose(1, 2) for x in "QKV"], dim=1)
        qkv_b = torch.stack([state_dict[f"{tl}attn.b_{x}"] for x in "QKV"], dim=1)
        weights |= {
            f"{hf}attention.query_key_value.weight": qkv_w.reshape(-1, d_model),
            f"{hf}attention.query_key_value.bias": qkv_b.reshape(-1),
            f"{hf}attention.dense.weight": state_dict[f"{tl}attn.W_O"].reshape(-1, d_model).T,
            f"{hf}attention.dense.bias": state_dict[f"{tl}attn.b_O"],
            f"{hf}mlp.dense_h_to_4h.weight": state_dict[f"{tl}mlp.W_in"].T,
            f"{hf}mlp.dense_h_to_4h.bias": state_dict[f"{tl}mlp.b_in"],
            f"{hf}mlp.dense_4h_to_h.weight": state_dict[f"{tl}mlp.W_out"].T,
            f"{hf}mlp.dense_4h_to_h.bias": state_dict[f"{tl}mlp.b_out"],
            f"{hf}input_layernorm.weight": state_dict[f"{tl}ln1.w"],
            f"{hf}input_layernorm.bias": state_dict[f"{tl}ln1.b"],
            f"{hf}post_attention_layernorm.weight": state_dict[f"{tl}ln2.w"],
            f"{hf}post_attention_layernorm.bias": state_dict[f"{tl}ln2.b"],
        }
    model.load_state_dict({key: value.contiguous() for key, value in weights.items()}, strict=True)
    return model.eval()
