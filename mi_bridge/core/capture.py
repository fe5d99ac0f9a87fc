"""Capture ``resid_post`` at chosen layers and positions, keeping only (n, d) per layer and position.

Runs stop at the last layer they need (``stop_at_layer``); answer logits are computed at the answer
position only (final LayerNorm + unembedding of one position instead of the whole sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.core import progress
from mi_bridge.core.device import model_device
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.runtime.backend import HookedModel, residual_at
from mi_bridge.runtime.kv_cache import KVCache


def batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


@dataclass
class Capture:
    states: dict[int, Float[Tensor, "n_items n_positions d_model"]]
    """``blocks.{L}.hook_resid_post`` at the requested positions, per layer."""
    answer_logits: Float[Tensor, "n_items d_vocab"] | None
    """Next-token logits at the last position (only when asked for: it needs the whole model)."""


@torch.no_grad()
def capture_resid_post(
    model: HookedModel,
    tokens: Int[Tensor, "n_items pos"],
    *,
    layers: Sequence[int],
    positions: Sequence[int],
    with_answer_logits: bool = False,
    batch_size: int = 64,
    description: str | None = None,
) -> Capture:
    """Residual states at ``positions`` for every layer; the run stops after max(layers) unless the
    answer logits are wanted too, in which case one pass serves both. Each batch of ``tokens`` (on any
    device) runs on the model's device; states and logits come back on the CPU (docs/DESIGN.md, "Devices")."""
    states: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    logits: list[Tensor] = []
    device = model_device(model)
    index = torch.tensor(list(positions), device=device)

    def store(act: Tensor, hook) -> None:
        states[hook.layer()].append(act[:, index].cpu())  # indexing copies; on the CPU, .cpu() does not

    chunks = batches(tokens.shape[0], batch_size)
    if description:
        chunks = progress.track(chunks, description)
    hooks = [(resid_post_name(layer), store) for layer in layers]
    stop = model.cfg.n_layers if with_answer_logits else max(layers) + 1
    for chunk in chunks:
        final = residual_at(model, tokens[chunk].to(device), fwd_hooks=hooks, stop_at_layer=stop)
        if with_answer_logits:
            logits.append(answer_logits(model, final, start_at_layer=stop).cpu())
    return Capture(
        states={layer: torch.cat(parts) for layer, parts in states.items()},
        answer_logits=torch.cat(logits) if with_answer_logits else None,
    )


def resid_states(
    model: HookedModel,
    tokens: Int[Tensor, "n_items pos"],
    layer: int,
    position: int = -1,
    batch_size: int = 64,
) -> Float[Tensor, "n_items d_model"]:
    """``blocks.{layer}.hook_resid_post`` at one position of every prompt (default: the last), on the CPU:
    the states a bridge is fitted on and maps (``capture_resid_post`` for several layers and positions)."""
    capture = capture_resid_post(model, tokens, layers=[layer], positions=[position], batch_size=batch_size)
    return capture.states[layer][:, 0]


def answer_logits(
    model: HookedModel,
    residual: Float[Tensor, "batch pos d_model"],
    *,
    start_at_layer: int,
    cache: KVCache | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """Run the remaining layers from ``start_at_layer`` (against ``cache`` when the residual holds only
    the last positions); logits at the last position only."""
    cached = {} if cache is None else cache.forward_kwargs(residual.shape[1], from_residual=True)
    final = residual_at(
        model, residual, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layers, **cached
    )
    return model.unembed(model.ln_final(final[:, -1:]))[:, 0]
