"""The bridge interface: a map from sender states to receiver states that can be fitted, applied, saved
and loaded, whatever its kind.

Every kind saves the same way: its tensors in ``bridge.safetensors`` and ``bridge.json`` (kind, shapes,
the tensors' SHA-256, its own numbers and the run's metadata), each written atomically. ``load_bridge``
reads any saved bridge back as its own kind, after checking checksum, shapes and finiteness, so a damaged
or foreign file is one clear error, never a silently wrong map.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from mi_bridge.errors import UserError
from mi_bridge.files import sha256_file, write_atomic


class Bridge(ABC):
    """``fit(x, y, seed=...)``, ``bridge(x)``, ``save(folder)``, ``Bridge.load(folder)`` and a ``kind``."""

    kind: ClassVar[str]
    metadata: dict

    @classmethod
    @abstractmethod
    def fit(cls, x: Float[Tensor, "n d_sender"], y: Float[Tensor, "n d_receiver"], *, seed: int) -> Bridge:
        """The bridge fitted on (x, y) pairs; ``seed`` fixes whatever the fit draws."""

    @classmethod
    @abstractmethod
    def fit_and_score(
        cls,
        x: Float[Tensor, "n d_sender"],
        y: Float[Tensor, "n d_receiver"],
        *,
        n_heldout: int,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> tuple[Bridge, dict[str, float]]:
        """The bridge fitted without the last ``n_heldout`` pairs, and its fit quality on them (its kind's
        metrics from ``bridges.metrics``): one fit entry per kind, looked up by name in ``BRIDGES``."""

    @abstractmethod
    def __call__(self, x: Float[Tensor, "*batch d_sender"]) -> Float[Tensor, "*batch d_receiver"]: ...

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]:
        """What ``save`` writes to safetensors (the ``weight`` is (d_sender, d_receiver))."""

    def numbers(self) -> dict:
        """The kind's own JSON-able fields (e.g. the ridge strength), saved beside the tensors."""
        return {}

    @classmethod
    @abstractmethod
    def from_saved(cls, tensors: dict[str, Tensor], numbers: dict, metadata: dict) -> Bridge:
        """The bridge from what ``save`` wrote; shapes are already checked against ``shapes``."""

    @classmethod
    @abstractmethod
    def shapes(cls, d_sender: int, d_receiver: int) -> dict[str, tuple[int, ...]]:
        """Every tensor's expected shape."""

    @property
    def d_sender(self) -> int:
        return self.tensors()["weight"].shape[0]

    @property
    def d_receiver(self) -> int:
        return self.tensors()["weight"].shape[1]

    def save(self, folder: Path) -> None:
        """``bridge.safetensors`` + ``bridge.json`` in ``folder``, each written atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.tensors().items()}
        write_atomic(folder / "bridge.safetensors", lambda p: save_file(tensors, p))
        meta = {"kind": self.kind, **self.numbers(), "d_sender": self.d_sender, "d_receiver": self.d_receiver}
        meta |= {"sha256": sha256_file(folder / "bridge.safetensors"), "metadata": self.metadata}
        write_atomic(folder / "bridge.json", lambda p: p.write_text(json.dumps(meta, indent=2)))

    @classmethod
    def load(cls, folder: Path, expect: dict | None = None) -> Bridge:
        """A saved bridge of this kind (``Bridge.load``: of any kind); checksum, shapes and finiteness
        are checked, and every ``expect`` entry (e.g. sender, receiver, sender_hook, receiver_hook) must
        equal the bridge's own metadata."""
        _import_kinds()
        meta, tensors = read_saved(folder)
        kind = meta.get("kind", "ridge")  # bridges saved before kinds existed are ridge bridges
        if kind not in BRIDGES:
            raise UserError(f"bridge in {folder} is of unknown kind {kind!r} (known: {', '.join(BRIDGES)})")
        variant = BRIDGES[kind]
        if cls is not Bridge and variant is not cls:
            raise UserError(f"bridge in {folder} is a {kind} bridge, not a {cls.kind} bridge")
        d_in, d_out = int(meta["d_sender"]), int(meta["d_receiver"])
        for name, shape in variant.shapes(d_in, d_out).items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise UserError(f"bridge in {folder}: tensor {name!r} missing or not of shape {shape}")
            if not torch.isfinite(tensors[name]).all():
                raise UserError(f"bridge in {folder}: tensor {name!r} holds NaN or infinite values")
        metadata = meta.get("metadata", {})
        for key, value in (expect or {}).items():
            if metadata.get(key) != value:
                raise UserError(
                    f"bridge in {folder} was fitted for {key}={metadata.get(key)!r}, not {value!r}; "
                    "refusing to use it"
                )
        return variant.from_saved(tensors, meta, metadata)


def read_saved(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    """A saved bridge's JSON and tensors, its checksum verified (any kind); one line when unreadable."""
    try:
        meta = json.loads((folder / "bridge.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("bridge.json is not a JSON object")
        if meta.get("sha256") != sha256_file(folder / "bridge.safetensors"):
            raise UserError(
                f"bridge in {folder}: checksum mismatch (the weights file is damaged or replaced)"
            )
        tensors = load_file(folder / "bridge.safetensors")
        int(meta["d_sender"]), int(meta["d_receiver"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise UserError(f"cannot read bridge in {folder}: {err}") from None
    return meta, tensors


BRIDGES: dict[str, type[Bridge]] = {}
"""Every kind by name (``register``); ``load`` looks a saved bridge's kind up here."""
KV_KIND_LOADERS: dict[str, Callable[[Path, dict | None], object]] = {}
"""Kinds that are not one state-to-state map (the KV family: keys and values per receiver layer), by
name, with their loaders (``register_kv_kind``); they save the same two files, so ``load_bridge`` reads
any of them."""


def register(variant: type[Bridge]) -> type[Bridge]:
    BRIDGES[variant.kind] = variant
    return variant


def register_kv_kind(variant: type) -> type:
    """Register a kind with its own shapes (``kind`` and a ``load(folder, expect)`` classmethod)."""
    KV_KIND_LOADERS[variant.kind] = variant.load
    return variant


def _import_kinds() -> None:
    import mi_bridge.bridges.kv
    import mi_bridge.bridges.kv_fuser
    import mi_bridge.bridges.ridge
    import mi_bridge.bridges.sgd_l2  # noqa: F401 (the kinds register themselves on import)


def bridge_kind(kind: str) -> type[Bridge]:
    """The bridge class registered as ``kind``."""
    _import_kinds()
    if kind not in BRIDGES:
        raise UserError(f"unknown bridge kind {kind!r} (known: {', '.join(BRIDGES)})")
    return BRIDGES[kind]


def load_bridge(folder: Path, expect: dict | None = None) -> Bridge | Any:
    """A saved bridge of any kind, the KV family's included."""
    _import_kinds()
    kind = read_saved(folder)[0].get("kind")
    return KV_KIND_LOADERS[kind](folder, expect) if kind in KV_KIND_LOADERS else Bridge.load(folder, expect)
