"""The KV-cache interface of the backend seam: a frozen prefix built once and shared by many tails, and a
growing cache for decoding, with the same meaning on both TransformerLens backends. What each backend
stores and passes is its own (``runtime.tl3``: TransformerLens' ``TransformerLensKeyValueCache``;
``runtime.tl4``: Hugging Face's cache, with frozen layers for a shared prefix); this module keeps the
positions, the mask and the repetition, and asks ``BACKEND`` for the rest.

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

from mi_bridge.runtime.backend import BACKEND, HookedModel, residual_at


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
        return BACKEND.kv_forward_kwargs(self, new_positions, full_mask, from_residual=from_residual)

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
            self, store=BACKEND.kv_repeated(self.store, copies), mask=mask, copies=self.copies * copies
        )


def prefix_cache(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"] | None = None
) -> KVCache:
    """The frozen cache of ``tokens`` (every layer), for many later passes over the positions after it."""
    cache = decoding_cache(model, tokens.shape[0], tokens.device)
    run_tokens(model, tokens, cache, mask, stop_at_layer=model.cfg.n_layers)  # no unembedding needed
    return freeze(cache)


def decoding_cache(model: HookedModel, batch: int, device: torch.device | str) -> KVCache:
    """An empty cache that grows with every forward pass given it (greedy decoding)."""
    return KVCache(BACKEND.kv_store(model, batch, device), 0, batch, frozen=False)


def freeze(cache: KVCache) -> KVCache:
    """The same keys and values, never grown again."""
    cache.frozen = True  # TL 3 freezes its store in place: the caller's handle must not grow either
    return replace(cache, store=BACKEND.kv_frozen(cache.store), frozen=True)


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
