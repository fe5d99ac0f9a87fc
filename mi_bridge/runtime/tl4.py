"""The TransformerLens 4 backend: a Hugging Face model wrapped as it is in a ``TransformerBridge``, in
compatibility mode (TransformerLens 3's hook names and load-time processing).

The KV cache is Hugging Face's own, passed as ``past_key_values=`` (the bridge silently ignores
``past_kv_cache=``). Its mask always covers the cached and the new positions: a mask over the new positions
alone gives silently wrong logits. A plain ``DynamicCache`` grows with every use, so a shared prefix is
held in layers that return the prefix joined to the new keys without storing them (``frozen_layer``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.runtime.base import Backend, HookedModel, cat_repeated
from mi_bridge.runtime.neox import neox_from_hooked

if TYPE_CHECKING:
    from mi_bridge.runtime.kv_cache import KVCache


class TL4(Backend):
    trains_toy_pair = False  # TransformerLens 4 removed HookedTransformer

    def from_hf(
        self,
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
        from transformer_lens import TransformerBridge

        if n_devices > 1:
            bridge = TransformerBridge.boot_transformers(  # loads ``name`` at ``revision`` itself
                name, tokenizer=tokenizer, dtype=getattr(torch, dtype), n_devices=n_devices, revision=revision
            )
            bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not processing)
            return bridge.eval()
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

    def from_table(
        self,
        repository: str,
        tokenizer: Any,
        revision: str | None,
        device: str,
        dtype: str,
        n_devices: int = 1,
    ) -> HookedModel:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(repository, revision=revision, dtype=torch.float32)
        return self.from_hf(
            hf_model,
            tokenizer,
            name=repository,
            device=device,
            dtype=dtype,
            n_devices=n_devices,
            revision=revision,
        )

    def from_hooked_state_dict(
        self,
        state_dict: dict[str, Tensor],
        *,
        build: Callable[[], HookedModel],
        n_heads: int,
        n_ctx: int,
        name: str,
        device: str,
    ) -> HookedModel:
        # no HookedTransformer to build: the same function as an unprocessed GPT-NeoX model in a bridge
        neox = neox_from_hooked(state_dict, n_heads=n_heads, n_ctx=n_ctx)
        return self.from_hf(neox, None, name=name, device=device, processing=False)

    def residual_at(
        self,
        model: HookedModel,
        input: Any,
        *,
        stop_at_layer: int,
        start_at_layer: int | None = None,
        fwd_hooks: Sequence = (),
        **kwargs: Any,
    ) -> Float[Tensor, "batch pos d_model"]:
        n_layers = model.cfg.n_layers
        if stop_at_layer < n_layers or (start_at_layer is not None and start_at_layer >= stop_at_layer):
            return super().residual_at(
                model,
                input,
                stop_at_layer=stop_at_layer,
                start_at_layer=start_at_layer,
                fwd_hooks=fwd_hooks,
                **kwargs,
            )
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        def stop(act: Tensor, hook: Any) -> None:
            # TL 4 would run on to the logits (the unembedding of every position): its own stop signal after
            # the last block returns that block's output instead (the KV cache has every layer by then)
            raise StopAtLayerException(act)

        last = (f"blocks.{n_layers - 1}.hook_resid_post", stop)
        return model.run_with_hooks(
            input, fwd_hooks=[*fwd_hooks, last], start_at_layer=start_at_layer, **kwargs
        )

    def cache_key_tag(self) -> str:
        return f"|transformer-lens {self.major}"

    def kv_store(self, model: HookedModel, batch: int, device: torch.device | str) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def kv_frozen(self, store: Any) -> Any:
        from transformers.cache_utils import Cache

        return Cache(layers=[frozen_layer(layer.keys, layer.values) for layer in store.layers])

    def kv_repeated(self, store: Any, copies: int) -> Any:
        from transformers.cache_utils import Cache

        return Cache(layers=[frozen_layer(layer.keys, layer.values, copies) for layer in store.layers])

    def kv_forward_kwargs(
        self,
        cache: KVCache,
        new_positions: int,
        full_mask: Int[Tensor, "rows length"] | None,
        *,
        from_residual: bool,
    ) -> dict[str, Any]:
        if full_mask is None:
            return {"past_key_values": cache.store}
        kwargs = {"past_key_values": cache.store, "attention_mask": full_mask}
        if from_residual:  # the bridge derives positions from the mask for tokens only, not for a residual
            kwargs["position_ids"] = (full_mask.cumsum(-1) - 1).clamp_min(0)[:, -new_positions:]
        return kwargs


def _frozen_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class FrozenLayer(DynamicLayer):
        """A Hugging Face cache layer holding a prefix's keys and values ([batch, heads, pos, d_head]) that
        every ``update`` joins to the new ones (repeated ``copies`` times along the batch) without storing
        them, so one prefix serves any number of passes."""

        def __init__(self, keys: Tensor, values: Tensor, copies: int = 1):
            super().__init__()
            self.keys, self.values, self.copies = keys, values, copies
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            return (
                cat_repeated(self.keys, key_states, self.copies, 2),
                cat_repeated(self.values, value_states, self.copies, 2),
            )

    return FrozenLayer


def frozen_layer(keys: Tensor, values: Tensor, copies: int = 1) -> Any:
    """A ``FrozenLayer`` (a class built on first use: transformers loads with the first model)."""
    global _FROZEN_LAYER
    if _FROZEN_LAYER is None:
        _FROZEN_LAYER = _frozen_layer_class()
    return _FROZEN_LAYER(keys, values, copies)


_FROZEN_LAYER = None
