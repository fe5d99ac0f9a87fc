"""Keys and values as data: captured from one model's run over a prompt, delivered to a model as a frozen
cache of prepended positions that its own attention reads, and gated per layer (the KV-cache channel).

Layout. ``KVEntries`` is one ``(keys, values)`` pair per layer, each ``[batch, pos, n_kv_heads, d_head]``:
the values at ``blocks.{L}.attn.hook_k`` / ``hook_v``, i.e. the key and value projections BEFORE rotary
(grouped-query models: their ``n_kv_heads``, not repeated to ``n_heads``). Padded positions hold whatever
the model computed there; the mask says which are real.

Why before rotary, on both backends. The backends' caches disagree: TransformerLens 3 stores keys before
rotary and rotates the whole key sequence on every pass (positions from the mask), while Hugging Face's
cache under TransformerLens 4 stores them after rotary, at the positions they were computed at. A key
before rotary is the same whatever its position, so a map between two models' keys (``bridges.kv``) is
one map for every position; after rotary it would have to undo one rotation and apply another. Delivery
then lets the receiver position the keys itself: ``delivered_cache`` runs the receiver over placeholder
tokens with ``hook_k`` / ``hook_v`` replaced by the delivered entries, so the receiver's own code applies
its own rotary variant (partial, GQA, whatever the architecture) at the prefix's mask-derived positions and
stores the result in its backend's convention. A model's own entries delivered before a prompt Q give
exactly the run of prefix + Q as one sequence (tests/models/test_kv_delivery.py).

The gate (``gate_hooks``). With prepended positions, zero keys and values are not "no message": a zero key
scores 0 against every query and still takes softmax mass, diluting attention to Q's own positions. So the
gate of layer L adds log g_L to the attention scores of the delivered positions at
``blocks.{L}.attn.hook_attn_scores``: their unnormalized weights are multiplied by g_L, g = 1 leaves the
delivered cache as it is, and g = 0 (log g = -inf) masks the delivered positions exactly, so the receiver
runs Q alone. Q's positions still start after the prefix; with rotary (relative) positions that equals Q at
positions 0.. up to rounding (~1e-6); with absolute position embeddings it would not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.runtime.backend import HookedModel
from mi_bridge.runtime.kv_cache import KVCache, prefix_cache

KV = tuple[Float[Tensor, "batch pos n_kv_heads d_head"], Float[Tensor, "batch pos n_kv_heads d_head"]]
KVEntries = Sequence[KV]
"""One (keys, values) pair per layer, keys before rotary (module docstring)."""
Hook = tuple[str, Callable[..., Any]]


def kv_hook_names(layer: int) -> tuple[str, str]:
    """The hook points of layer ``layer``'s keys and values before rotary (same name on both backends)."""
    return f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_v"


def capture_kv(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"] | None = None
) -> list[KV]:
    """Every layer's keys (before rotary) and values of ``model`` run over ``tokens`` (left-padded rows
    marked by ``mask``), through the same path that builds a prefix cache, so the positions are the ones
    a delivered cache gets. Under ``torch.no_grad`` unless gradients are wanted."""
    captured: dict[tuple[int, int], Tensor] = {}

    def record(layer: int, which: int) -> Callable[..., None]:
        # TL 4 reports a hook by its alias name: the layer and tensor are bound here, not read off the hook
        return lambda act, hook: captured.__setitem__((layer, which), act)

    hooks = [
        (name, record(layer, which))
        for layer in range(model.cfg.n_layers)
        for which, name in enumerate(kv_hook_names(layer))
    ]
    with model.hooks(fwd_hooks=hooks):
        prefix_cache(model, tokens, mask)
    return [(captured[layer, 0], captured[layer, 1]) for layer in range(model.cfg.n_layers)]


def delivered_cache(
    model: HookedModel, entries: KVEntries, mask: Int[Tensor, "batch pos"] | None = None
) -> KVCache:
    """A frozen cache of ``model`` holding ``entries`` (one per layer of ``model``, in its shapes) as a
    prefix of ``pos`` positions (left padding marked by ``mask``), for ``run_tokens`` /
    ``forward_kwargs`` / ``repeated`` like any prefix cache. Built by one pass over placeholder tokens with
    each layer's ``hook_k`` / ``hook_v`` replaced, so the model positions the keys itself (module
    docstring); gradients flow from the cache back to ``entries``."""
    if len(entries) != model.cfg.n_layers:
        raise ValueError(f"{len(entries)} layers of keys and values for a model of {model.cfg.n_layers}")
    keys = entries[0][0]
    placeholder = torch.zeros(keys.shape[:2], dtype=torch.long, device=keys.device)

    def put(delivered: Tensor) -> Callable[..., Tensor]:
        def replace(act: Tensor, hook: Any) -> Tensor:
            if act.shape != delivered.shape:
                raise ValueError(f"delivered {tuple(delivered.shape)} where the model has {tuple(act.shape)}")
            return delivered.to(device=act.device, dtype=act.dtype)

        return replace

    hooks = [
        (name, put(tensor))
        for layer, pair in enumerate(entries)
        for name, tensor in zip(kv_hook_names(layer), pair, strict=True)
    ]
    with model.hooks(fwd_hooks=hooks):
        return prefix_cache(model, placeholder, mask)


def gate_hooks(log_gates: Float[Tensor, " n_layers"], n_prefix: int) -> list[Hook]:
    """Hooks adding ``log_gates[L]`` (log g_L; -inf closes layer L) to the scores of the first
    ``n_prefix`` key positions (the delivered cache) at every layer's ``hook_attn_scores``; active only
    around passes that run after a delivered cache (``with model.hooks(fwd_hooks=gate_hooks(...))``)."""

    def gate(layer: int) -> Callable[..., Tensor]:
        def add(scores: Float[Tensor, "batch head q k"], hook: Any) -> Float[Tensor, "batch head q k"]:
            bias = log_gates[layer].to(device=scores.device, dtype=scores.dtype)
            return torch.cat([scores[..., :n_prefix] + bias, scores[..., n_prefix:]], dim=-1)

        return add

    return [(f"blocks.{layer}.attn.hook_attn_scores", gate(layer)) for layer in range(log_gates.shape[0])]
