"""The shared controls: a derangement (every item gets another item's vector) and a random vector of each
vector's norm. Both protocols draw them from a seeded CPU generator, so every device gets the same draw."""

from __future__ import annotations

from collections import defaultdict

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.seeds import SeedOffset


def random_like(vectors: Float[Tensor, "*n d"], generator: torch.Generator) -> Float[Tensor, "*n d"]:
    """Random directions with each row's norm (a row: the last dimension, whatever the leading ones)."""
    direction = torch.randn(vectors.shape, generator=generator)
    return direction / direction.norm(dim=-1, keepdim=True) * vectors.norm(dim=-1, keepdim=True)


def derangement(n: int, generator: torch.Generator) -> Int[Tensor, " n"]:
    """An index permutation in which no item keeps its own position (a cyclic shift of a permutation)."""
    order = torch.randperm(n, generator=generator)
    index = torch.empty_like(order)
    index[order] = order.roll(1)
    return index


def same_length_derangement(token_lists: list[list[int]], seed: int) -> list[int]:
    """A donor per item among the items of the same prompt length (the paper's shuffled control); an
    item alone with its length keeps its own vector, as in the paper's non-strict default."""
    by_length = defaultdict(list)
    for i, tokens in enumerate(token_lists):
        by_length[len(tokens)].append(i)
    donor = list(range(len(token_lists)))
    generator = torch.Generator().manual_seed(SeedOffset.CONTROLS + seed)
    for group in by_length.values():
        if len(group) > 1:
            for i, j in enumerate(derangement(len(group), generator).tolist()):
                donor[group[i]] = group[j]
    return donor
