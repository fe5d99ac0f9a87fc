"""The TransformerLens 3 backend: models are ``HookedTransformer``s, built by TransformerLens' own loader
or its config and weight converters, and the KV cache is its ``TransformerLensKeyValueCache``
(``past_kv_cache=``). From tokens that cache takes the new positions' mask and appends the cached one
itself; from a residual (``start_at_layer``) its blocks take the whole mask."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from mi_bridge.runtime.base import Backend, HookedModel, cat_repeated

if TYPE_CHECKING:
    from mi_bridge.runtime.kv_cache import KVCache


class TL3(Backend):
    trains_toy_pair = True

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
        from transformer_lens import HookedTransformer
        from transformer_lens import loading_from_pretrained as loading

        name = table_name or name
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
        if (
            n_devices > 1
        ):  # consecutive blocks of layers on cuda:0 .. cuda:n-1, as TransformerLens places them
            model.move_model_modules_to_device()
            return model.eval()
        return model.to(device, print_details=False).eval()

    def from_table(
        self,
        repository: str,
        tokenizer: Any,
        revision: str | None,
        device: str,
        dtype: str,
        n_devices: int = 1,
    ) -> HookedModel:
        from transformer_lens import HookedTransformer

        with contextlib.redirect_stdout(io.StringIO()):  # TL prints a "Loaded pretrained model" line
            return HookedTransformer.from_pretrained(
                repository,
                device=device,
                dtype=dtype,
                tokenizer=tokenizer,
                revision=revision,
                **(
                    {"n_devices": n_devices} if n_devices > 1 else {}
                ),  # only then: the default path stays as it was
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
        model = build()
        model.load_state_dict(state_dict)
        return model.to(device, print_details=False).eval()

    def cache_key_tag(self) -> str:
        return ""  # the keys from before the TL 4 backend, unchanged

    def kv_store(self, model: HookedModel, batch: int, device: torch.device | str) -> Any:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(model.cfg, device, batch)

    def kv_frozen(self, store: Any) -> Any:
        store.freeze()
        return store

    def kv_repeated(self, store: Any, copies: int) -> Any:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        entries = [_repeated_entry(e, copies) for e in store.entries]
        mask = store.previous_attention_mask.repeat(copies, 1)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=True)

    def kv_forward_kwargs(
        self,
        cache: KVCache,
        new_positions: int,
        full_mask: Int[Tensor, "rows length"] | None,
        *,
        from_residual: bool,
    ) -> dict[str, Any]:
        store = cache.store
        if cache.copies > 1 and not from_residual:  # TL 3 checks the stored batch against the tokens'
            store = _materialized(cache.store)
        if full_mask is None:  # no padding: the calls made before the KV interface, to the bit
            device = cache.store.previous_attention_mask.device
            ones = {"attention_mask": torch.ones(cache.rows, new_positions, dtype=torch.long, device=device)}
            return {"past_kv_cache": store} | ({} if from_residual else ones)
        new = full_mask[:, -new_positions:]
        return {"past_kv_cache": store, "attention_mask": full_mask if from_residual else new}


def _materialized(store: Any) -> Any:
    """A repeated cache with its copies stored (TL 3 reads the batch off the stored keys when the input is
    tokens; the evaluator's many stacked passes start from a residual and never need this)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries = []
    for entry in store.entries:
        copies = entry.copies
        keys, values = (t.repeat(copies, *[1] * (t.dim() - 1)) for t in (entry.past_keys, entry.past_values))
        entries.append(TransformerLensKeyValueCacheEntry(keys, values, frozen=True))
    return TransformerLensKeyValueCache(entries, store.previous_attention_mask, frozen=True)


def _repeated_entry(entry: Any, copies: int) -> Any:
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    class RepeatedEntry(TransformerLensKeyValueCacheEntry):
        copies: int

        def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
            # TL 3 keys: [batch, pos, heads, d_head]
            return (
                cat_repeated(self.past_keys, new_keys, copies, 1),
                cat_repeated(self.past_values, new_values, copies, 1),
            )

    repeated = RepeatedEntry(entry.past_keys, entry.past_values, frozen=True)
    repeated.copies = copies
    return repeated
