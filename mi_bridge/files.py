"""Crash-safe writes: every file goes to a temporary name and is renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from mi_bridge.core.device import to_cpu_numpy


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def publish_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(staging)`` on a hidden sibling folder, then rename it into place: never half-written.

    Staging folders that a killed earlier run left behind for the same folder are removed first.
    """
    for stale in [
        *folder.parent.glob(f".{folder.name}.partial-*"),
        *folder.parent.glob(f".{folder.name}.old-*"),
    ]:
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        write(staging)
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensor(tensor) -> str:
    """Checksum of a tensor's bytes (dtype-agnostic: the raw storage), on any device."""
    return hashlib.sha256(to_cpu_numpy(tensor.contiguous().view(-1).view(torch.uint8)).tobytes()).hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("MI_BRIDGE_CACHE", Path.home() / ".cache" / "mi_bridge"))


def write_parquet(path: Path, frame) -> None:
    """A pandas DataFrame as Parquet (pyarrow), without its index (inside a staging folder)."""
    frame.to_parquet(path, index=False, engine="pyarrow")


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON with a final newline (inside a staging folder: the folder is what is atomic)."""
    path.write_text(json.dumps(data, indent=2) + "\n")
