"""The loading half of the backend seam: a Hugging Face causal LM as a hooked model under
TransformerLens 3 (``HookedTransformer``) or 4 (``TransformerBridge`` in compatibility mode), chosen by
the installed version (``runtime.backend``), and the toy pair's weights as a GPT-NeoX model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mi_bridge.runtime.backend import HOOKED_TRANSFORMER, HookedModel

if TYPE_CHECKING:  # transformers loads with the first model, after every input check
    from transformers import GPTNeoXForCausalLM


def load_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str,
    device: str = "cpu",
    dtype: str = "float32",
    processing: bool = True,
    n_devices: int = 1,
    revision: str | None = None,
    table_name: str | None = None,
) -> HookedModel:
    """A hooked model of the Hugging Face causal LM ``hf_model``, in eval mode.

    ``name``: the checkpoint's folder (holding its ``config.json``) or, under TL 3, a TransformerLens
    model name. ``table_name``: under TL 3, the entry of TransformerLens' table whose config the folder's
    weights load under, where TL 3 cannot convert the folder alone (Gemma 3); TL 4 reads the folder.
    ``tokenizer``: its Hugging Face tokenizer (loaded with ``add_bos_token=True``), or None
    for a model without one (the toy pair). ``processing``: HookedTransformer's load-time processing
    (``from_pretrained``'s defaults); off, the weights run as they are (``from_pretrained_no_processing``).
    Under TL 4 the bridge wraps ``hf_model`` itself and rewrites its weights: pass a copy to keep one.
    ``n_devices`` > 1 splits the layers across that many GPUs (TL 3's ``n_devices``; under TL 4 the bridge
    loads the checkpoint itself, at ``revision``, with ``n_devices``, which it refuses beside a preloaded
    model).
    """
    if HOOKED_TRANSFORMER:
        return _hooked_transformer(
            hf_model, tokenizer, table_name or name, device, dtype, processing, n_devices
        )
    if n_devices > 1:
        from transformer_lens import TransformerBridge

        bridge = TransformerBridge.boot_transformers(  # loads ``name`` at ``revision`` itself
            name, tokenizer=tokenizer, dtype=getattr(torch, dtype), n_devices=n_devices, revision=revision
        )
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not processing)
        return bridge.eval()
    return _bridge(hf_model, tokenizer, name, device, dtype, processing)


def _hooked_transformer(
    hf_model: Any, tokenizer: Any, name: str, device: str, dtype: str, processing: bool, n_devices: int = 1
) -> HookedModel:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    flags = dict(
        fold_ln=processing,
        center_writing_weights=processing,
        center_unembed=processing,
        fold_value_biases=processing,
    )
    if not (Path(name) / "config.json").exists():  # a TransformerLens name: its own loader
        split = {"n_devices": n_devices} if n_devices > 1 else {}
        model = HookedTransformer.from_pretrained(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype, **flags, **split
        )
        return model.eval()
    # from_pretrained knows names only; its config and weight converters also take a local folder
    torch_dtype = getattr(torch, dtype)
    cfg = loading.get_pretrained_model_config(
        name, fold_ln=processing, device=device, dtype=torch_dtype, n_devices=n_devices
    )
    state_dict = loading.get_pretrained_state_dict(name, cfg, hf_model, dtype=torch_dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **flags)
    if n_devices > 1:  # consecutive blocks of layers on cuda:0 .. cuda:n-1, as TransformerLens places them
        model.move_model_modules_to_device()
        return model.eval()
    return model.to(device, print_details=False).eval()


def _bridge(
    hf_model: Any, tokenizer: Any, name: str, device: str, dtype: str, processing: bool
) -> HookedModel:
    from transformer_lens import TransformerBridge

    # A passed-in model is used as it is (no cast, no move): cast and move it first.
    hf_model = hf_model.to(device=device, dtype=getattr(torch, dtype)).eval()
    if tokenizer is not None:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=getattr(torch, dtype)
        )
    else:  # boot_transformers would fetch a tokenizer by name; this builder takes none
        from transformer_lens.model_bridge.sources import build_bridge_from_module
        from transformer_lens.utilities.attn_implementation import force_eager_attention

        force_eager_attention(hf_model)  # the attention hooks need eager attention (boot does the same)
        bridge = build_bridge_from_module(
            hf_model,
            hf_model.config.architectures[0],
            hf_config=hf_model.config,
            device=device,
            dtype=getattr(torch, dtype),
            model_name=name,
        )
    # no_processing keeps the legacy hook names without touching the weights
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not processing)
    return bridge.eval()


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
