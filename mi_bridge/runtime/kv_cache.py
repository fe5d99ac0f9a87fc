"""The KV-cache interface of the backend seam: a frozen prefix built once and shared by many tails, and a
growing cache for decoding, with the same meaning on both TransformerLens backends.

- TransformerLens 3 keeps its own ``TransformerLensKeyValueCache`` (``past_kv_cache=``). From tokens it
  takes the new positions' mask and appends the cached one itself; from a residual (``start_at_layer``)
  its blocks take the whole mask.
- TransformerLens 4's ``TransformerBridge`` takes Hugging Face's own cache as ``past_key_values=`` (and
  silently ignores ``past_kv_cache=``). Its mask always covers the cached and the new positions: a mask
  over the new positions alone gives silently wrong logits. A plain ``DynamicCache`` grows with every use,
  so a shared prefix is held in layers that return the prefix joined to the new keys without storing
  them (``_FrozenLayer``).

``mask`` is None while no position is padded: the forward passes then carry no mask at all, as before
this interface (padding-free runs stay bit-identical). Left padding sets it, and both backends derive
every row's positions from it (rotary models included).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mi_bridge.runtime.backend import TL_MAJOR, HookedModel, residual_at


@dataclass
class KVCache:
    """Keys and values of the positions already run, for ``batch`` rows (served to ``copies``·batch rows
    condition-major when repeated)."""

    store: Any
    """TL 3: ``TransformerLensKeyValueCache``; TL 4: a Hugging Face ``Cache``."""
    length: int
    """Cached positions per row."""
    batch: int
    """Rows stored (served ``copies``·batch rows)."""
    mask: Int[Tensor, "batch length"] | None = None
    """1 for a real token, 0 for padding; None while nothing is padded."""
    frozen: bool = True
    """A frozen cache serves many forward passes and never grows; a decoding cache grows with each."""
    copies: int = 1
    """How many times the stored rows are repeated along the batch (``repeated``)."""

    def forward_kwargs(
        self, new_positions: int, new_mask: Int[Tensor, "rows new"] | None = None, *, from_residual: bool
    ) -> dict[str, Any]:
        """The keyword arguments of one forward pass over ``new_positions`` positions against this cache
        (``from_residual``: the input is a residual entering a block, ``start_at_layer``). A decoding
        cache records the new positions (and their mask)."""
        full_mask = self._joined_mask(new_positions, new_mask)
        if not self.frozen:
            self.length += new_positions
            self.mask = full_mask
        if TL_MAJOR < 4:
            store = self.store
            if self.copies > 1 and not from_residual:  # TL 3 checks the stored batch against the tokens'
                store = _tl3_materialized(self.store)
            if full_mask is None:  # no padding: the calls made before this interface, to the bit
                return {"past_kv_cache": store} | (
                    {} if from_residual else {"attention_mask": _ones(new_positions, self)}
                )
            new = full_mask[:, -new_positions:]
            return {"past_kv_cache": store, "attention_mask": full_mask if from_residual else new}
        if full_mask is None:
            return {"past_key_values": self.store}
        kwargs = {"past_key_values": self.store, "attention_mask": full_mask}
        if from_residual:  # the bridge derives positions from the mask for tokens only, not for a residual
            kwargs["position_ids"] = (full_mask.cumsum(-1) - 1).clamp_min(0)[:, -new_positions:]
        return kwargs

    def _joined_mask(self, new_positions: int, new_mask: Tensor | None) -> Tensor | None:
        if self.mask is None and new_mask is None:
            return None
        device = (new_mask if new_mask is not None else self.mask).device
        past = self.mask if self.mask is not None else torch.ones(self.rows, self.length, device=device)
        new = new_mask if new_mask is not None else torch.ones(self.rows, new_positions, device=device)
        return torch.cat([past.to(device).long(), new.long()], dim=1)

    @property
    def rows(self) -> int:
        return self.batch * self.copies

    def repeated(self, copies: int) -> KVCache:
        """This frozen cache serving ``copies``·batch rows (rows c·batch .. (c+1)·batch - 1 are copy c),
        without storing the copies: the repetition is written straight into the concatenation of cached
        and new keys that attention makes anyway."""
        if copies == 1:
            return self
        if not self.frozen or self.copies != 1:
            raise ValueError("only a frozen cache that is not repeated yet can be repeated")
        mask = None if self.mask is None else self.mask.repeat(copies, 1)
        return replace(
            self, store=_repeated_store(self.store, copies), mask=mask, copies=self.copies * copies
        )


def _ones(n: int, cache: KVCache) -> Tensor:
    return torch.ones(cache.rows, n, dtype=torch.long, device=cache.store.previous_attention_mask.device)


def prefix_cache(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"] | None = None
) -> KVCache:
    """The frozen cache of ``tokens`` (every layer), for many later passes over the positions after it."""
    cache = decoding_cache(model, tokens.shape[0], tokens.device)
    run_tokens(model, tokens, cache, mask, stop_at_layer=model.cfg.n_layers)  # no unembedding needed
    return freeze(cache)


def decoding_cache(model: HookedModel, batch: int, device: torch.device | str) -> KVCache:
    """An empty cache that grows with every forward pass given it (greedy decoding)."""
    if TL_MAJOR < 4:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return KVCache(
            TransformerLensKeyValueCache.init_cache(model.cfg, device, batch), 0, batch, frozen=False
        )
    from transformers import DynamicCache

    return KVCache(DynamicCache(), 0, batch, frozen=False)


def freeze(cache: KVCache) -> KVCache:
    """The same keys and values, never grown again."""
    cache.frozen = True  # TL 3 freezes its store in place: the caller's handle must not grow either
    if TL_MAJOR < 4:
        cache.store.freeze()
        return cache
    from transformers.cache_utils import Cache

    layers = [_FrozenLayer(layer.keys, layer.values) for layer in cache.store.layers]
    return replace(cache, store=Cache(layers=layers), frozen=True)


def run_tokens(
    model: HookedModel,
    tokens: Int[Tensor, "batch new"],
    cache: KVCache,
    mask: Int[Tensor, "batch new"] | None = None,
    *,
    stop_at_layer: int | None = None,
) -> Tensor:
    """``model(tokens)`` after the cached positions (the residual when ``stop_at_layer`` is given, else
    the logits); a decoding cache grows by these positions. Hooks in a surrounding ``model.hooks``
    block fire on the new positions only."""
    kwargs = cache.forward_kwargs(tokens.shape[1], mask, from_residual=False)
    if stop_at_layer is None:
        return model(tokens, **kwargs)
    return residual_at(model, tokens, stop_at_layer=stop_at_layer, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Repetition along the batch (condition-major), one per backend's key layout


def _cat_repeated(past: Tensor, new: Tensor, copies: int, dim: int) -> Tensor:
    """``torch.cat([past.repeat(copies, ...), new], dim)`` in one copy (``dim``: the position axis)."""
    batch, n_past = past.shape[0], past.shape[dim]
    shape = list(new.shape)
    shape[dim] = n_past + new.shape[dim]
    out = new.new_empty(shape)
    out.view(copies, batch, *shape[1:]).narrow(dim + 1, 0, n_past).copy_(past.expand(copies, *past.shape))
    out.narrow(dim, n_past, new.shape[dim]).copy_(new)
    return out


def _repeated_store(store: Any, copies: int) -> Any:
    if TL_MAJOR < 4:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        entries = [_tl3_repeated_entry(e, copies) for e in store.entries]
        mask = store.previous_attention_mask.repeat(copies, 1)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=True)
    from transformers.cache_utils import Cache

    return Cache(layers=[_FrozenLayer(layer.keys, layer.values, copies) for layer in store.layers])


def _tl3_materialized(store: Any) -> Any:
    """A repeated TL 3 cache with its copies stored (TL 3 reads the batch off the stored keys when the
    input is tokens; the evaluator's many stacked passes start from a residual and never need this)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries = []
    for entry in store.entries:
        copies = entry.copies
        keys, values = (t.repeat(copies, *[1] * (t.dim() - 1)) for t in (entry.past_keys, entry.past_values))
        entries.append(TransformerLensKeyValueCacheEntry(keys, values, frozen=True))
    return TransformerLensKeyValueCache(entries, store.previous_attention_mask, frozen=True)


def _tl3_repeated_entry(entry: Any, copies: int) -> Any:
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    class RepeatedEntry(TransformerLensKeyValueCacheEntry):
        copies: int

        def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
            # TL 3 keys: [batch, pos, heads, d_head]
            return (
                _cat_repeated(self.past_keys, new_keys, copies, 1),
                _cat_repeated(self.past_values, new_values, copies, 1),
            )

    repeated = RepeatedEntry(entry.past_keys, entry.past_values, frozen=True)
    repeated.copies = copies
    return repeated


def _frozen_layer_class():
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
                _cat_repeated(self.keys, key_states, self.copies, 2),
                _cat_repeated(self.values, value_states, self.copies, 2),
            )

    return FrozenLayer


def _FrozenLayer(keys: Tensor, values: Tensor, copies: int = 1) -> Any:  # noqa: N802 (a class, built lazily)
    global _FROZEN_LAYER
    if _FROZEN_LAYER is None:
        _FROZEN_LAYER = _frozen_layer_class()
    return _FROZEN_LAYER(keys, values, copies)


_FROZEN_LAYER = None
