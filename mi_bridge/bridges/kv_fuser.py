"""The trained KV bridges (issue 34, variant b): a fuser that maps the sender's keys and values into the
receiver's cache, and a learned prefix that reads no sender at all, the adaptation control. Both are
``KVSource`` modules trained by one loop (``bridges.kv_training``) through the frozen receiver.

- ``KVFuser``: per receiver layer j, keys and values of sender layer ``sender_layers[j]`` go through the
  closed-form map of ``KVLinearBridge`` (kept fixed) plus a trainable low-rank correction and bias, in the
  bridge's standardized spaces, so the maps start exactly at variant (a) (the gates at
  sigmoid(``gate_init``), 0.5 by default), and the low rank keeps it small: rank 8 between two SmolLM2-135M (30 layers, 3 KV heads × 64) trains 30 × 2 × (8·(192 + 192) + 192)
  + 30 ≈ 196k numbers (``n_trainable``). It reads only the sender's cache: the receiver's statistics it
  de-standardizes with are the same for every item.
- ``LearnedPrefix``: the same delivery (n positions, a gate per layer) of trainable constants, low rank
  in the receiver's standardized space, starting at the receiver's mean key and value. Whatever it gains
  is adaptation of the receiver, not a message; ``matched_to`` sizes its rank to the fuser's budget.

The gate of layer j is g_j = sigmoid(gate_logits[j]), entering attention as log g_j on the delivered
positions (``runtime.kv_entries.gate_hooks``): a gate logit of -inf is exactly the receiver alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from mi_bridge.bridges.base import register_kv_kind
from mi_bridge.bridges.kv import KVLinearBridge, SenderKV, check_shapes, read_kv, save_kv
from mi_bridge.errors import UserError
from mi_bridge.runtime.kv_entries import KV


class _LowRankOut(nn.Module):
    """The shared output stage, per receiver layer: ``(z @ up + base + bias) · std + mean`` into the
    receiver's scale, where z holds ``rank`` numbers per position. ``up`` starts at zero, so a source
    starts at ``base`` (fuser: the ridge map; prefix: the receiver's mean)."""

    def __init__(self, n_layers: int, rank: int, d_out: int):
        super().__init__()
        self.up = nn.Parameter(torch.zeros(n_layers, rank, d_out))
        self.bias = nn.Parameter(torch.zeros(n_layers, d_out))
        self.register_buffer("y_mean", torch.zeros(n_layers, d_out))
        self.register_buffer("y_std", torch.ones(n_layers, d_out))

    def forward(self, z: Float[Tensor, "layer *rows rank"], base: Tensor | float = 0.0) -> Tensor:
        shape = (z.shape[0],) + (1,) * (z.dim() - 2) + (-1,)  # per layer, broadcast over rows
        out = z @ self.up.view(z.shape[0], *(1,) * (z.dim() - 3), *self.up.shape[1:]) + base
        return (out + self.bias.view(shape)) * self.y_std.view(shape) + self.y_mean.view(shape)

    def set_receiver(self, bridges: Sequence) -> None:
        """The receiver's statistics from each layer's ridge map (``LinearBridge.y_norm``)."""
        self.y_mean.copy_(torch.stack([b.y_norm.mean for b in bridges]))
        self.y_std.copy_(torch.stack([b.y_norm.std for b in bridges]))


class KVSource(nn.Module, ABC):
    """Keys and values for every receiver layer (``forward``) and a gate per layer (``log_gates``); saved
    and loaded as ``bridge.safetensors`` + ``bridge.json`` like every bridge (``bridges.kv``)."""

    kind: ClassVar[str]
    reads_sender: ClassVar[bool]
    """Whether ``forward`` needs the sender's keys and values (the training loop captures them only then)."""
    d_sender: int = 0
    """The sender's per-position width (``n_kv_heads·d_head``) it reads; 0 for a source that reads none."""

    def __init__(self, n_layers: int, receiver_heads: Sequence[int], gate_init: float):
        super().__init__()
        self.receiver_heads = tuple(receiver_heads)
        self.gate_logits = nn.Parameter(torch.full((n_layers,), float(gate_init)))
        self.metadata: dict = {}

    def log_gates(self) -> Float[Tensor, " n_layers"]:
        return F.logsigmoid(self.gate_logits)

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @abstractmethod
    def settings(self) -> dict:
        """The constructor's arguments (what ``load`` rebuilds the module from)."""

    @abstractmethod
    def forward(
        self, sender: SenderKV | None, sender_mask: Int[Tensor, "batch pos"] | None, batch: int
    ) -> tuple[list[KV], Int[Tensor, "batch n_prefix"] | None]:
        """One (keys, values) per receiver layer for ``batch`` rows, and the mask of the delivered positions."""

    def _pairs(self, keys: Tensor, values: Tensor) -> list[KV]:
        split = lambda flat: flat.unflatten(-1, self.receiver_heads)
        return [(split(k), split(v)) for k, v in zip(keys, values, strict=True)]

    def save(self, folder: Path) -> None:
        widths = {"d_sender": self.d_sender, "d_receiver": math.prod(self.receiver_heads)}
        save_kv(
            folder, self.kind, dict(self.state_dict()), {"settings": self.settings(), **widths}, self.metadata
        )

    @classmethod
    def load(cls, folder: Path, expect: dict | None = None) -> KVSource:
        meta, tensors = read_kv(folder, cls.kind, expect)
        try:
            source = cls(**meta["settings"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"cannot read bridge in {folder}: {err}") from None
        check_shapes(folder, tensors, {name: t.shape for name, t in source.state_dict().items()})
        source.load_state_dict(tensors)
        source.metadata = meta.get("metadata", {})
        return source


@register_kv_kind
class KVFuser(KVSource):
    """The sender's keys and values through the ridge map plus a trained low-rank correction (module
    docstring); build with ``from_bridge``."""

    kind: ClassVar[str] = "kv-fuser"
    reads_sender: ClassVar[bool] = True

    def __init__(
        self,
        sender_layers: Sequence[int],
        d_sender: int,
        receiver_heads: Sequence[int],
        rank: int = 8,
        gate_init: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(len(sender_layers), receiver_heads, gate_init)
        self.sender_layers, self.d_sender, self.rank, self.seed = tuple(sender_layers), d_sender, rank, seed
        n, d_out = len(sender_layers), math.prod(self.receiver_heads)
        generator = torch.Generator().manual_seed(seed)
        for name in ("keys", "values"):
            down = torch.randn(n, d_sender, rank, generator=generator) / math.sqrt(d_sender)
            self.register_parameter(f"{name}_down", nn.Parameter(down))
            self.register_buffer(f"{name}_weight", torch.zeros(n, d_sender, d_out))
            self.register_buffer(f"{name}_x_mean", torch.zeros(n, d_sender))
            self.register_buffer(f"{name}_x_std", torch.ones(n, d_sender))
            self.add_module(f"{name}_out", _LowRankOut(n, rank, d_out))

    @classmethod
    def from_bridge(
        cls, bridge: KVLinearBridge, *, rank: int = 8, gate_init: float = 0.0, seed: int = 0
    ) -> KVFuser:
        """A fuser starting at ``bridge``'s maps (same layer map), with its standardizations."""
        d_sender = bridge.keys[0].d_sender
        fuser = cls(bridge.sender_layers, d_sender, bridge.receiver_heads, rank, gate_init, seed)
        with torch.no_grad():
            for name, maps in (("keys", bridge.keys), ("values", bridge.values)):
                getattr(fuser, f"{name}_weight").copy_(torch.stack([b.weight for b in maps]))
                getattr(fuser, f"{name}_x_mean").copy_(torch.stack([b.x_norm.mean for b in maps]))
                getattr(fuser, f"{name}_x_std").copy_(torch.stack([b.x_norm.std for b in maps]))
                getattr(fuser, f"{name}_out").set_receiver(maps)
        fuser.metadata = dict(bridge.metadata)
        return fuser

    def settings(self) -> dict:
        return {
            "sender_layers": list(self.sender_layers),
            "d_sender": self.d_sender,
            "receiver_heads": list(self.receiver_heads),
            "rank": self.rank,
            "seed": self.seed,
        }

    def forward(
        self, sender: SenderKV | None, sender_mask: Int[Tensor, "batch pos"] | None, batch: int
    ) -> tuple[list[KV], Int[Tensor, "batch pos"] | None]:
        if sender is None:
            raise ValueError("the fuser reads the sender's keys and values")
        mapped = []
        for which, name in enumerate(("keys", "values")):
            x = torch.stack([sender[s][which].flatten(-2) for s in self.sender_layers])  # layer batch pos d
            mean, std = getattr(self, f"{name}_x_mean"), getattr(self, f"{name}_x_std")
            z = (x - mean[:, None, None]) / std[:, None, None]
            base = z @ getattr(self, f"{name}_weight")[:, None]
            mapped.append(getattr(self, f"{name}_out")(z @ getattr(self, f"{name}_down")[:, None], base))
        return self._pairs(*mapped), sender_mask


@register_kv_kind
class LearnedPrefix(KVSource):
    """``n_positions`` trainable keys and values per receiver layer, the same for every item (module
    docstring); build with ``from_bridge`` or ``matched_to``."""

    kind: ClassVar[str] = "kv-prefix"
    reads_sender: ClassVar[bool] = False

    def __init__(
        self,
        n_layers: int,
        n_positions: int,
        receiver_heads: Sequence[int],
        rank: int = 8,
        gate_init: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(n_layers, receiver_heads, gate_init)
        self.n_positions, self.rank, self.seed = n_positions, rank, seed
        generator = torch.Generator().manual_seed(seed)
        for name in ("keys", "values"):
            codes = torch.randn(n_layers, n_positions, rank, generator=generator)
            self.register_parameter(f"{name}_codes", nn.Parameter(codes))
            self.add_module(f"{name}_out", _LowRankOut(n_layers, rank, math.prod(self.receiver_heads)))

    @classmethod
    def from_bridge(
        cls, bridge: KVLinearBridge, n_positions: int, *, rank: int = 8, gate_init: float = 0.0, seed: int = 0
    ) -> LearnedPrefix:
        """A prefix starting at the receiver's mean key and value (``bridge``'s receiver statistics)."""
        prefix = cls(len(bridge.keys), n_positions, bridge.receiver_heads, rank, gate_init, seed)
        with torch.no_grad():
            prefix.keys_out.set_receiver(bridge.keys)
            prefix.values_out.set_receiver(bridge.values)
        prefix.metadata = dict(bridge.metadata)
        return prefix

    @classmethod
    def matched_to(
        cls,
        fuser: KVFuser,
        bridge: KVLinearBridge,
        n_positions: int,
        *,
        gate_init: float = 0.0,
        seed: int = 0,
    ) -> LearnedPrefix:
        """A prefix whose trainable-parameter count is as close to ``fuser``'s as its rank allows (a rank
        above ``n_positions`` or the receiver's width adds nothing, so the budget can fall short).
        ``n_positions``: as many as the fuser delivers, e.g. the sender prompts' median real length (the
        fuser's vary by item; the prefix's cannot)."""
        d_out = math.prod(fuser.receiver_heads)
        per_rank = n_positions + d_out
        rank = round(fuser.rank * (fuser.d_sender + d_out) / per_rank)
        rank = min(max(rank, 1), n_positions, d_out)
        return cls.from_bridge(bridge, n_positions, rank=rank, gate_init=gate_init, seed=seed)

    def settings(self) -> dict:
        return {
            "n_layers": self.gate_logits.shape[0],
            "n_positions": self.n_positions,
            "receiver_heads": list(self.receiver_heads),
            "rank": self.rank,
            "seed": self.seed,
        }

    def forward(
        self, sender: SenderKV | None, sender_mask: Int[Tensor, "batch pos"] | None, batch: int
    ) -> tuple[list[KV], None]:
        keys, values = (
            getattr(self, f"{name}_out")(getattr(self, f"{name}_codes")) for name in ("keys", "values")
        )
        expand = lambda t: t[:, None].expand(-1, batch, -1, -1)  # the same prefix for every row
        return self._pairs(expand(keys), expand(values)), None
