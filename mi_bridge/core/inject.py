"""Injection of vectors into ``blocks.{L}.hook_resid_post``: pure math first, hooks only at the edge.

Modes, with h the receiver's own state at the site and v the injected vector:
``add`` h + alpha*v · ``replace`` v · ``rescale`` v*|h|/|v| · ``rescale-add`` h + alpha*v*|h|/|v|.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.runtime.backend import HookedModel

MODES = ("add", "replace", "rescale", "rescale-add")
"""The split protocol's injection modes (every one is a condition)."""
ALL_MODES = (*MODES, "blend")
"""Every mode ``apply_injection`` knows: ``blend`` is the seed paper's."""
EPS = 1e-12


def rescale_to(
    vectors: Float[Tensor, "*batch d_model"], reference: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """Each vector scaled to the norm of its reference row (direction kept)."""
    return vectors * reference.norm(dim=-1, keepdim=True) / vectors.norm(dim=-1, keepdim=True).clamp_min(EPS)


def apply_injection(
    state: Float[Tensor, "*batch d_model"],
    vectors: Float[Tensor, "*batch d_model"],
    mode: str,
    alpha: float = 1.0,
) -> Float[Tensor, "*batch d_model"]:
    """The new residual state (``alpha`` is used by the additive modes and ``blend`` only). One vocabulary
    for both protocols: the split protocol's four ``MODES`` at one position per item, and the seed paper's
    ``blend`` (alpha · rescaled + (1 − alpha) · h) at every prompt position."""
    if mode == "add":
        return state + alpha * vectors
    if mode == "replace":
        return vectors.to(state.dtype).clone()
    if mode == "rescale":
        return rescale_to(vectors, state)
    if mode == "rescale-add":
        return state + alpha * rescale_to(vectors, state)
    if mode == "blend":
        return alpha * rescale_to(vectors, state) + (1 - alpha) * state
    raise ValueError(f"unknown injection mode {mode!r}; choose one of {', '.join(ALL_MODES)}")


def per_item(
    positions: int | Int[Tensor, " n"],
    vectors: Float[Tensor, " d_model"] | Float[Tensor, "n d_model"],
    n: int,
) -> tuple[Int[Tensor, " n"], Float[Tensor, "n d_model"]]:
    """Broadcast one position / one vector to every item."""
    positions = torch.as_tensor(positions).long()
    positions = positions.expand(n) if positions.ndim == 0 else positions
    vectors = vectors.expand(n, -1) if vectors.ndim == 1 else vectors
    if positions.shape != (n,) or vectors.shape[0] != n:
        raise ValueError(f"need one position and one vector per item (n={n}), or one for all")
    return positions, vectors


def inject_residual(
    residual: Float[Tensor, "n pos d_model"],
    positions: int | Int[Tensor, " n"],
    vectors: Float[Tensor, " d_model"] | Float[Tensor, "n d_model"],
    mode: str,
    alpha: float = 1.0,
) -> Float[Tensor, "n pos d_model"]:
    """A copy of ``residual`` with the injection applied at one position per item; others untouched."""
    n = residual.shape[0]
    positions, vectors = per_item(positions, vectors.to(residual.device, residual.dtype), n)
    positions, rows = positions.to(residual.device), torch.arange(n, device=residual.device)
    out = residual.clone()
    out[rows, positions] = apply_injection(residual[rows, positions], vectors, mode, alpha)
    return out


def injection_hook(positions, vectors, mode: str, alpha: float = 1.0):
    """A TransformerLens hook ``fn(act, *, hook)`` that applies :func:`inject_residual`."""

    def hook_fn(act: Float[Tensor, "n pos d_model"], hook) -> Float[Tensor, "n pos d_model"]:
        return inject_residual(act, positions, vectors, mode, alpha)

    return hook_fn


def run_with_injection(
    model: HookedModel,
    tokens: Int[Tensor, "n pos"],
    *,
    layer: int,
    position: int | Int[Tensor, " n"],
    vector: Float[Tensor, " d_model"] | Float[Tensor, "n d_model"],
    mode: str,
    alpha: float = 1.0,
) -> Float[Tensor, "n pos d_vocab"]:
    """Full-sequence logits of ``model`` with the injection at ``blocks.{layer}.hook_resid_post``.

    The hook lives only inside the ``with`` block, so it is removed even if the forward pass raises.
    """
    if mode not in MODES:
        raise ValueError(f"unknown injection mode {mode!r}; choose one of {', '.join(MODES)}")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} is out of range for a model with {model.cfg.n_layers} layers")
    hook = injection_hook(position, vector, mode, alpha)
    with model.hooks(fwd_hooks=[(resid_post_name(layer), hook)]):
        return model(tokens)
