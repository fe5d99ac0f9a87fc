"""The activation store: residual states computed once per key, kept in memory and, optionally, on disk.

States are (n, d) per (model, prompt, layer, position), in float32 whatever the model's dtype. An
``ActivationStore`` computes every missing layer of one request in a single forward pass and keeps the
result in memory and, optionally, on disk as safetensors under a key that hashes everything that
determines it (the model's exact checkpoint first, see ``mi_bridge.models.sources.identity``), so a later
run or analysis with the same configuration reuses it. A model whose checkpoint cannot be resolved is kept
in memory only. The disk cache is capped (``MI_BRIDGE_CACHE_MAX_GB``): least recently used files go first."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mi_bridge.core import progress
from mi_bridge.core.capture import capture_resid_post
from mi_bridge.errors import UserError
from mi_bridge.files import cache_root, sha256_tensor, write_atomic, write_text_atomic

CACHE_VERSION = 2  # bump when what a cached state means changes (2: keyed by the exact checkpoint)


class ActivationStore:
    """Residual states computed once per key; ``folder=None`` keeps them in memory only, and so does
    a key described as ``None`` (see ``describe``). ``max_bytes`` caps the folder's cached tensors."""

    def __init__(self, folder: Path | None, max_bytes: int | None = None):
        self.folder = folder
        self.max_bytes = max_bytes
        self.memory: dict[tuple, Tensor] = {}
        self.descriptions: dict[str, dict | None] = {}

    def describe(self, key: str, description: dict | None) -> None:
        """What ``key`` holds (written beside its files as ``identity.json``, read by ``cache info``);
        ``None``: a model whose exact checkpoint is unknown, never written to disk."""
        self.descriptions[key] = description

    def states(
        self,
        key: str,
        model,
        tokens: Int[Tensor, "n pos"],
        layers: Sequence[int],
        position: int,
        batch_size: int,
    ) -> dict[int, Float[Tensor, "n d_model"]]:
        found = {layer: self._load(key, layer, position) for layer in layers}
        missing = [layer for layer, value in found.items() if value is None]
        if missing:
            capture = capture_resid_post(
                model, tokens, layers=missing, positions=[position], batch_size=batch_size
            )
            for layer in missing:
                found[layer] = capture.states[layer][:, 0].float()  # fits and statistics stay float32+
                self._save(key, layer, position, found[layer])
        return found

    def tensor(self, key: str, name: str, compute) -> Tensor:
        """Any other per-item tensor (e.g. the sender's greedy answers), cached under the same key."""
        cached = self._load(key, name, None)
        if cached is None:
            cached = compute()
            self._save(key, name, None, cached)
        return cached

    def _path(self, key: str, layer, position) -> Path | None:
        if self.folder is None or (key in self.descriptions and self.descriptions[key] is None):
            return None
        return (
            self.folder
            / key
            / (f"L{layer}-P{position}.safetensors" if position is not None else f"{layer}.safetensors")
        )

    def _load(self, key: str, layer, position) -> Tensor | None:
        if (key, layer, position) in self.memory:
            return self.memory[(key, layer, position)]
        path = self._path(key, layer, position)
        if path is None or not path.exists():
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                expected = (handle.metadata() or {}).get("sha256")
                value = handle.get_tensor("value")
            problem = None
            if expected is None or sha256_tensor(value) != expected:
                problem = "checksum mismatch"
            elif not torch.isfinite(value).all():
                problem = "NaN or infinite values"
        except Exception as err:  # unreadable or truncated
            problem = f"unreadable ({type(err).__name__})"
        if problem:  # never used: reported, discarded and recomputed
            progress.warn(f"discarding cached activations {path}: {problem}; recomputing")
            path.unlink(missing_ok=True)
            return None
        mark_used(path)
        self.memory[(key, layer, position)] = value
        return value

    def _save(self, key: str, layer, position, value: Tensor) -> None:
        self.memory[(key, layer, position)] = value
        path = self._path(key, layer, position)
        if path is None:
            return
        value = value.contiguous()
        metadata = {
            "sha256": sha256_tensor(value),
            "shape": json.dumps(list(value.shape)),
            "dtype": str(value.dtype),
        }
        write_atomic(path, lambda tmp: save_file({"value": value}, tmp, metadata=metadata))
        mark_used(path)
        described = path.parent / "identity.json"
        if self.descriptions.get(key) is not None and not described.exists():
            write_text_atomic(described, json.dumps(self.descriptions[key], indent=2))
        if self.max_bytes is not None:
            evict(self.folder, self.max_bytes)


def mark_used(path: Path) -> None:
    """Stamp a cached file with the time of its last use (its mtime, at the clock's full resolution: file
    systems stamp writes at a coarser tick), which eviction reads; a read-only cache stays as it is."""
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(path, ns=(now, now))


def evict(folder: Path, max_bytes: int) -> None:
    """Delete cached tensors, least recently used first, until those left take at most ``max_bytes``."""
    files = []
    for path in folder.glob("*/*.safetensors"):
        with contextlib.suppress(OSError):  # another process may be evicting too
            stat = path.stat()
            files.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        if not any(path.parent.glob("*.safetensors")):
            (path.parent / "identity.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def default_store(use_cache: bool = True) -> ActivationStore:
    """The on-disk activation cache, or a memory-only store with ``use_cache=False`` (``--no-cache``)."""
    return ActivationStore(cache_root() / "activations", max_bytes()) if use_cache else ActivationStore(None)


DEFAULT_MAX_GB = 20


def max_bytes() -> int:
    """The activation cache's cap from ``MI_BRIDGE_CACHE_MAX_GB``."""
    text = os.environ.get("MI_BRIDGE_CACHE_MAX_GB", str(DEFAULT_MAX_GB))
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = math.nan
    if not (math.isfinite(gigabytes) and gigabytes >= 0):
        raise UserError(f"MI_BRIDGE_CACHE_MAX_GB must be a size in gigabytes >= 0 (got {text!r})")
    return int(gigabytes * 1e9)
