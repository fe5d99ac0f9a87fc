"""The KV-cache bridge family: the sender's keys and values of its hop-1 prompt, mapped layer by layer into
the receiver's, delivered as prepended cache positions that the receiver's own attention reads
(``runtime.kv_entries``). Its two prompts differ, so the message is a prefix, never a position-by-position
fusion.

- ``LayerMap``: which sender layer each receiver layer reads (C2C's last-aligned map by default).
- ``KVLinearBridge`` (closed form): per receiver layer, one ridge map for keys and one for values from
  the sender's per-position keys (flattened ``n_kv_heads·d_head``, before rotary) to the receiver's, fitted
  on both models' caches of the SAME text (same tokenizer, so position i is token i in both).
- ``bridges.kv_fuser``: the fuser trained through the frozen receiver, and its learned-prefix control.

Why not a subclass of ``bridges.base.Bridge``: that interface maps one state to one state (``fit(x, y)``
on ``[n, d]`` pairs) and describes a saved bridge by ``shapes(d_sender, d_receiver)``, which cannot name a
per-layer family of maps. The KV kinds are siblings with the same shape: ``fit``, ``__call__``,
``fit_and_score``, ``save`` and ``load``, in the same files (``bridge.safetensors`` + ``bridge.json`` with
kind, SHA-256 and metadata, written atomically; checksum, shapes and finiteness checked on load). Each
layer's map is a ``bridges.ridge.LinearBridge`` (standardized ridge, lambda by held-out error).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from safetensors.torch import save_file
from torch import Tensor

from mi_bridge.bridges.base import read_saved, register_kv_kind
from mi_bridge.bridges.layer_map import LayerMap
from mi_bridge.bridges.metrics import fit_quality
from mi_bridge.bridges.ridge import TENSOR_NAMES, LinearBridge, Standardizer
from mi_bridge.errors import UserError
from mi_bridge.files import sha256_file, write_atomic
from mi_bridge.runtime.backend import HookedModel
from mi_bridge.runtime.kv_entries import KV, capture_kv

SenderKV = Sequence[tuple[Float[Tensor, "batch pos n_kv_sender d_sender_head"], Tensor]]
ReceiverKV = Sequence[tuple[Float[Tensor, "batch pos n_kv_receiver d_receiver_head"], Tensor]]
"""Per-layer (keys, values) of ``runtime.kv_entries`` on each side of a bridge (own axis names: the two
models' heads differ)."""


def vocabulary(model: HookedModel) -> dict[str, int] | int:
    """What a sender and receiver must share: the tokenizer's vocabulary, or for models without a tokenizer
    (the toy pair, whose word list is shared) the vocabulary size."""
    return model.cfg.d_vocab if model.tokenizer is None else model.tokenizer.get_vocab()


def require_same_tokenizer(sender: HookedModel, receiver: HookedModel) -> None:
    """Refuse a pair whose tokenizers differ: the map pairs position i of one cache with position i of the
    other, which is the same token only under one tokenizer."""
    if vocabulary(sender) != vocabulary(receiver):
        raise UserError("the kv bridges need a sender and receiver with the same tokenizer; these differ")


def paired_caches(
    sender: HookedModel,
    receiver: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> tuple[SenderKV, ReceiverKV]:
    """Both models' keys and values of the same text (under ``torch.no_grad``), after the tokenizer check."""
    require_same_tokenizer(sender, receiver)
    with torch.no_grad():
        return capture_kv(sender, tokens, mask), capture_kv(receiver, tokens, mask)


def real_positions(
    tensor: Float[Tensor, "batch pos n_kv_heads d_head"], mask: Int[Tensor, "batch pos"] | None
) -> Float[Tensor, "n d"]:
    """One row per real position, heads flattened (``n_kv_heads·d_head``)."""
    flat = tensor.flatten(-2)
    return flat.reshape(-1, flat.shape[-1]) if mask is None else flat[mask.bool()]


@register_kv_kind
@dataclass
class KVLinearBridge:
    """Per receiver layer, a ridge map of keys and one of values from the sender layer ``sender_layers[j]``."""

    kind: ClassVar[str] = "kv-linear"

    keys: list[LinearBridge]
    values: list[LinearBridge]
    layer_map: LayerMap
    sender_layers: tuple[int, ...]
    receiver_heads: tuple[int, int]
    """(n_kv_heads, d_head) of the receiver: how a mapped row is split into heads."""
    metadata: dict = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        sender: SenderKV,
        receiver: ReceiverKV,
        mask: Int[Tensor, "batch pos"] | None = None,
        *,
        layer_map: LayerMap | None = None,
        validation_fraction: float = 0.2,
        seed: int = 0,
        metadata: dict | None = None,
    ) -> KVLinearBridge:
        """Fitted on both models' caches of the same text (``paired_caches``), real positions only."""
        layer_map = layer_map or LayerMap()
        sources = layer_map.sender_layers(len(sender), len(receiver))
        fitted: list[list[LinearBridge]] = [[], []]
        for j, s in enumerate(sources):
            for which in (0, 1):
                x, y = real_positions(sender[s][which], mask), real_positions(receiver[j][which], mask)
                fit = LinearBridge.fit(x, y, validation_fraction=validation_fraction, seed=seed)
                fitted[which].append(fit)
        heads = tuple(receiver[0][0].shape[-2:])
        return cls(*fitted, layer_map, sources, heads, dict(metadata or {}))

    @classmethod
    def identity(cls, receiver: ReceiverKV, mask: Int[Tensor, "batch pos"] | None = None) -> KVLinearBridge:
        """Every layer's own keys and values, unchanged: the map of a model paired with itself under the
        identity layer map, with no fit (a ridge fit of x onto x is close to the identity, not equal to it).
        Its standardizations are the receiver's statistics on both sides, which the fuser and the learned
        prefix start from; ``__call__`` then returns its input to rounding."""

        def same(tensor: Tensor) -> LinearBridge:
            rows = real_positions(tensor, mask).double()
            fitted = Standardizer.fit(rows)
            scale = lambda: Standardizer(fitted.mean.float(), fitted.std.float())  # own tensors: saved apart
            eye = torch.eye(rows.shape[1])
            return LinearBridge(weight=eye, x_norm=scale(), y_norm=scale(), ridge_lambda=0.0)

        keys = [same(k) for k, _ in receiver]
        values = [same(v) for _, v in receiver]
        layers = tuple(range(len(receiver)))
        return cls(keys, values, LayerMap("identity"), layers, tuple(receiver[0][0].shape[-2:]))

    @classmethod
    def fit_and_score(
        cls,
        sender: SenderKV,
        receiver: ReceiverKV,
        mask: Int[Tensor, "batch pos"] | None = None,
        *,
        n_heldout: int,
        layer_map: LayerMap | None = None,
        seed: int = 0,
    ) -> tuple[KVLinearBridge, dict[str, dict[str, float]]]:
        """Fitted without the last ``n_heldout`` texts (rows); scored on them (``score``)."""
        rows = lambda entries, part: [(k[part], v[part]) for k, v in entries]
        fit, held = slice(None, -n_heldout), slice(-n_heldout, None)
        fit_mask, held_mask = (None, None) if mask is None else (mask[fit], mask[held])
        bridge = cls.fit(rows(sender, fit), rows(receiver, fit), fit_mask, layer_map=layer_map, seed=seed)
        return bridge, bridge.score(rows(sender, held), rows(receiver, held), held_mask)

    def __call__(self, sender: SenderKV) -> list[KV]:
        """The receiver's keys and values (one pair per receiver layer) from the sender's."""

        def mapped(bridge: LinearBridge, tensor: Tensor) -> Tensor:
            rows = tensor.flatten(-2)
            return bridge(rows.reshape(-1, rows.shape[-1])).reshape(*rows.shape[:-1], *self.receiver_heads)

        return [
            (mapped(k_map, sender[s][0]), mapped(v_map, sender[s][1]))
            for s, k_map, v_map in zip(self.sender_layers, self.keys, self.values, strict=True)
        ]

    def score(
        self, sender: SenderKV, receiver: ReceiverKV, mask: Int[Tensor, "batch pos"] | None = None
    ) -> dict[str, dict[str, float]]:
        """Fit quality (``bridges.metrics.fit_quality``) of keys and of values on real positions, averaged
        over receiver layers (held-out texts, or the fit is scored on its own data)."""
        mapped = self(sender)
        report = {}
        for which, name, maps in ((0, "keys", self.keys), (1, "values", self.values)):
            layers = [
                fit_quality(real_positions(m[which], mask), real_positions(r[which], mask), bridge.y_norm)
                for m, r, bridge in zip(mapped, receiver, maps, strict=True)
            ]
            report[name] = {metric: statistics.fmean(q[metric] for q in layers) for metric in layers[0]}
        return report

    def save(self, folder: Path) -> None:
        tensors = {
            f"{name}.{j}.{tensor}": value
            for name, maps in (("keys", self.keys), ("values", self.values))
            for j, bridge in enumerate(maps)
            for tensor, value in bridge.tensors().items()
        }
        lambdas = {
            name: [b.ridge_lambda for b in maps]
            for name, maps in (("keys", self.keys), ("values", self.values))
        }
        numbers = {"layer_map": str(self.layer_map), "sender_layers": list(self.sender_layers)}
        numbers |= {"receiver_heads": list(self.receiver_heads), "ridge_lambdas": lambdas}
        numbers |= {"d_sender": self.keys[0].d_sender, "d_receiver": self.keys[0].d_receiver}
        save_kv(folder, self.kind, tensors, numbers, self.metadata)

    @classmethod
    def load(cls, folder: Path, expect: dict | None = None) -> KVLinearBridge:
        meta, tensors = read_kv(folder, cls.kind, expect)
        try:
            sources, heads = tuple(meta["sender_layers"]), tuple(meta["receiver_heads"])
            shapes = LinearBridge.shapes(int(meta["d_sender"]), int(meta["d_receiver"]))
            maps: dict[str, list[LinearBridge]] = {}
            for name in ("keys", "values"):
                expected = {f"{name}.{j}.{t}": shapes[t] for j in range(len(sources)) for t in TENSOR_NAMES}
                check_shapes(folder, tensors, expected)
                maps[name] = [
                    LinearBridge.from_saved(
                        {t: tensors[f"{name}.{j}.{t}"] for t in TENSOR_NAMES}, {"ridge_lambda": lam}, {}
                    )
                    for j, lam in enumerate(meta["ridge_lambdas"][name])
                ]
            layer_map = LayerMap.parse(meta["layer_map"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"cannot read bridge in {folder}: {err!r}") from None
        return cls(maps["keys"], maps["values"], layer_map, sources, heads, meta.get("metadata", {}))


# ---------------------------------------------------------------------------------------------------------
# Saving: the files of bridges.base, for kinds that are not one state-to-state map


def save_kv(folder: Path, kind: str, tensors: dict[str, Tensor], numbers: dict, metadata: dict) -> None:
    """``bridge.safetensors`` + ``bridge.json`` (kind, the kind's numbers, SHA-256, metadata), atomically.
    ``numbers`` holds ``d_sender`` and ``d_receiver`` (per-position widths), which ``bridges.base`` reads."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    write_atomic(folder / "bridge.safetensors", lambda p: save_file(tensors, p))
    meta = {
        "kind": kind,
        **numbers,
        "sha256": sha256_file(folder / "bridge.safetensors"),
        "metadata": metadata,
    }
    write_atomic(folder / "bridge.json", lambda p: p.write_text(json.dumps(meta, indent=2)))


def read_kv(folder: Path, kind: str, expect: dict | None = None) -> tuple[dict, dict[str, Tensor]]:
    """A saved bridge's JSON and tensors (read and checksummed by ``bridges.base``), refused in one line
    when of another kind, not finite, or fitted for other ``expect`` metadata."""
    meta, tensors = read_saved(folder)
    if meta.get("kind") != kind:
        raise UserError(f"bridge in {folder} is a {meta.get('kind')} bridge, not a {kind} bridge")
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"bridge in {folder}: tensor {bad[0]!r} holds NaN or infinite values")
    metadata = meta.get("metadata", {})
    for key, value in (expect or {}).items():
        if metadata.get(key) != value:
            raise UserError(f"bridge in {folder} was fitted for {key}={metadata.get(key)!r}, not {value!r}")
    return meta, tensors


def check_shapes(folder: Path, tensors: dict[str, Tensor], shapes: dict[str, Sequence[int]]) -> None:
    for name, shape in shapes.items():
        if name not in tensors or tuple(tensors[name].shape) != tuple(shape):
            raise UserError(f"bridge in {folder}: tensor {name!r} missing or not of shape {tuple(shape)}")
