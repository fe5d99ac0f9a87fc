"""The seed protocol's bridges: (sender, receiver) last-token states of the fit corpus, grouped by length
(no padding, so no state is ever read at a pad), and every bridge kind fitted per seed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.bridges.base import bridge_kind
from mi_bridge.bridges.metrics import l2_fit_quality, l2_mean
from mi_bridge.core import progress
from mi_bridge.core.capture import batches, capture_resid_post
from mi_bridge.models.loading import ModelPair


def fit_pairs(
    pair: ModelPair, token_lists: list[list[int]], sender_layer: int, receiver_layer: int, batch_size: int
) -> tuple[Float[Tensor, "n d_sender"], Float[Tensor, "n d_receiver"]]:
    """Sender and receiver states of the same text paired per position, in corpus order."""
    token_lists = [t for t in token_lists if t]
    chunks = progress.track(range(0, len(token_lists), 256), "seed protocol: fit-corpus states")
    xs, ys = [], []
    for start in chunks:
        part = token_lists[start : start + 256]
        xs += item_states(pair.sender, part, sender_layer, batch_size)
        ys += item_states(pair.receiver, part, receiver_layer, batch_size)
    return torch.cat(xs), torch.cat(ys)


def last_token_pairs(
    pair: ModelPair,
    sender_lists: list[list[int]],
    receiver_lists: list[list[int]],
    sender_layer: int,
    receiver_layer: int,
    batch_size: int,
) -> tuple[Float[Tensor, "n d_sender"], Float[Tensor, "n d_receiver"]]:
    """Across two tokenizers, only a text's last token is paired: each model's state after the whole text,
    in its own tokens (positions in between do not correspond)."""
    kept = [i for i, (s, r) in enumerate(zip(sender_lists, receiver_lists, strict=True)) if s and r]
    chunks = progress.track(range(0, len(kept), 256), "seed protocol: fit-corpus states (last token)")
    xs, ys = [], []
    for start in chunks:
        part = kept[start : start + 256]
        xs += [
            s[-1:]
            for s in item_states(pair.sender, [sender_lists[i] for i in part], sender_layer, batch_size)
        ]
        ys += [
            r[-1:]
            for r in item_states(pair.receiver, [receiver_lists[i] for i in part], receiver_layer, batch_size)
        ]
    return torch.cat(xs), torch.cat(ys)


@dataclass
class FittedBridge:
    kind: str
    seed: int
    translate: object
    """Callable (..., d_sender) -> (..., d_receiver)."""
    fit: dict[str, float]


def fit_bridges(
    kinds: list[str], x: Tensor, y: Tensor, seeds: list[int], device: torch.device | str = "cpu"
) -> tuple[dict[str, list[FittedBridge]], dict]:
    """Every bridge kind for every seed, on the first 90% of the pairs; fit quality on the last 10%
    (the paper's held-out split), beside the receiver-mean predictor in the same spaces. The SGD bridge
    trains on ``device``; the ridge bridge is fitted on the CPU (mi_bridge.core.device)."""
    n_val = max(1, int(len(x) * 0.1))
    y_fit, y_val = y[:-n_val], y[-n_val:]  # each kind fits and scores on the same split itself
    out: dict[str, list[FittedBridge]] = {kind: [] for kind in kinds}
    for seed in seeds:
        for kind in kinds:
            bridge, fit = bridge_kind(kind).fit_and_score(x, y, n_heldout=n_val, seed=seed, device=device)
            out[kind].append(FittedBridge(kind, seed, bridge, fit))
    trivial = l2_fit_quality(l2_mean(y_fit).expand(len(y_val), -1), y_val)
    return out, {"receiver_mean_direction": trivial, "n_fit_pairs": len(y_fit), "n_heldout_pairs": n_val}


def item_states(model, token_lists: list[list[int]], layer: int, batch_size: int) -> list[Tensor]:
    """``resid_post`` at every position of each item, (pos, d) per item."""
    out: list[Tensor | None] = [None] * len(token_lists)
    for group in length_groups(token_lists, batch_size):
        tokens = torch.tensor([token_lists[i] for i in group], device=model.cfg.device)
        states = capture_resid_post(model, tokens, layers=[layer], positions=range(tokens.shape[1])).states[
            layer
        ]
        for row, i in enumerate(group):
            out[i] = states[row].cpu()
    return out


def length_groups(token_lists: list[list[int]], batch_size: int) -> list[list[int]]:
    """Item indices in batches of equal token length (never padded)."""
    return groups_by([len(tokens) for tokens in token_lists], batch_size)


def groups_by(keys: list, batch_size: int) -> list[list[int]]:
    """Item indices in batches of equal key (e.g. a length, or prompt and answer lengths), keys sorted."""
    by_key = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    return [
        group[part]
        for key in sorted(by_key)
        for group in [by_key[key]]
        for part in batches(len(group), batch_size)
    ]
