"""Crash-safe writes: every file goes to a temporary name and is renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from mi_bridge.errors import UserError


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.touch()  # the mode a new file gets under the umask (usually 0644)...
        mode = tmp.stat().st_mode
        write(tmp)
        os.chmod(tmp, mode)  # ...kept where a writer makes its own private file (safetensors: 0600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def holds_something(folder: Path) -> bool:
    """Whether publishing to ``folder`` would replace something: a file, or a folder that is not empty."""
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def refuse_existing(folder: Path, what: str = "run folder") -> None:
    """One clear error where ``folder`` already holds something, before any work is done."""
    if holds_something(folder):
        raise UserError(f"{what} {folder} already exists; pass --overwrite to replace it, or choose --out")


def remove_folder(folder: Path) -> None:
    """``folder`` gone (``--overwrite`` of a folder filled piece by piece): renamed aside first, so that
    it never exists half-removed under its own name."""
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        folder.rename(old)
        shutil.rmtree(old)


def staging_folder(folder: Path) -> Path:
    """A new hidden sibling of ``folder``, created with the process's umask (usually 0755, readable by
    the group; ``tempfile.mkdtemp`` would make it 0700 and the published run private)."""
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def publish_folder(folder: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Call ``write(staging)`` on a hidden sibling folder, then rename it into place: never half-written.

    Without ``overwrite``, a ``folder`` that already holds something is a ``UserError`` (checked first,
    and again by the final rename, which fails rather than replace a folder that appeared meanwhile).
    Staging folders that a killed earlier run left behind for the same folder are removed first.
    """
    if not overwrite:
        refuse_existing(folder)
    for stale in [
        *folder.parent.glob(f".{folder.name}.partial-*"),
        *folder.parent.glob(f".{folder.name}.old-*"),
    ]:
        shutil.rmtree(stale, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)
    try:
        write(staging)
        if overwrite and holds_something(folder):
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old)  # only now: a crash before leaves the old run, never none
        else:
            try:
                staging.rename(folder)  # replaces an empty folder only
            except OSError:
                raise UserError(f"{folder} appeared while this run computed; nothing was written") from None
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
    return hashlib.sha256(
        tensor.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()
    ).hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("MI_BRIDGE_CACHE", Path.home() / ".cache" / "mi_bridge"))


def write_parquet(path: Path, frame) -> None:
    """A pandas DataFrame as Parquet (pyarrow), without its index (inside a staging folder)."""
    frame.to_parquet(path, index=False, engine="pyarrow")


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON with a final newline (inside a staging folder: the folder is what is atomic)."""
    path.write_text(json.dumps(data, indent=2) + "\n")
