"""The exact checkpoint behind a model, so that a cached state is reused only for the weights that made it.

A checkpoint is identified by its content: the SHA-256 of every weight file. Each source names its own
(``sources.base.ModelSource.load``): a hub model is its repository, the commit its revision resolves to in
the Hugging Face cache (``refs/<revision>`` names a folder ``snapshots/<commit>``), those hashes and the
dtype it runs in; a local folder is its path, the hashes and the dtype; a packaged model is its file's
hash, quantization and dequantized weights' hash; a toy model is its recipe hash, the SHA-256 of its
weights and its dtype. So two caches that hold different weights under one name and one commit (a
snapshot edited in place, a copied cache) never share cached activations.

The hashes cost nothing where the hub cache links a snapshot's file to its blob: an LFS blob's name is
the SHA-256 of its content. A plain file is hashed once and the hash kept in ``<cache>/hashes.json``,
keyed by path, size and modification time (a file replaced in place gets a new mtime, so a new hash).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mi_bridge.files import cache_root, sha256_file, sha256_tensor, write_text_atomic

SHA256 = re.compile(r"[0-9a-f]{64}")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def weights_sha256(model) -> str:
    """One checksum over every named tensor of ``model.state_dict()`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {list(tensor.shape)} {sha256_tensor(tensor.cpu())}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content: a hub LFS blob's own name, else hashed once and cached."""
    target = path.resolve()
    if target.parent.name == "blobs" and SHA256.fullmatch(target.name):
        return target.name
    stat = target.stat()
    key = f"{target}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_root() / "hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not SHA256.fullmatch(str(known.get(key, ""))):
        known = known if isinstance(known, dict) else {}
        known[key] = sha256_file(target)
        try:
            write_text_atomic(store, json.dumps(known, indent=1))
        except OSError:  # a read-only cache: the hash is recomputed next time, never wrong
            pass
    return known[key]


def weights_digest(folder: Path) -> str:
    """One SHA-256 over the names and content hashes of every weight file under ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no weight files in {folder}")
    lines = "".join(f"{p.relative_to(folder).as_posix()} {file_sha256(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def key_material(identity: dict) -> dict:
    """What a cache key hashes: the identity without the revision's name, since two names of one commit
    (``main`` and ``step143000``, say) are the same weights."""
    return {key: value for key, value in identity.items() if key != "revision"}


def same_weights(before: dict, now: dict) -> bool:
    """Whether a recorded identity and the loaded one name the same weights, on the fields both have (a
    record from before content hashes has no ``weights_sha256``: its commit still decides)."""
    a, b = key_material(before), key_material(now)
    return all(a[key] == b[key] for key in a.keys() & b.keys()) and bool(a.keys() & b.keys())


def describe(identity: dict | None) -> str:
    """One line: ``EleutherAI/pythia-160m@step143000 (commit 1a2b3c4d5e6f, float32)``."""
    if identity is None:
        return "unknown checkpoint"
    if "packaged" in identity:
        return (
            f"{identity['packaged']} (GGUF {identity['gguf_sha256'][:12]}, {identity['quantization']} dequantized, "
            f"weights {identity['weights_sha256'][:12]}, {identity['dtype']})"
        )
    if "folder" in identity:
        return f"{identity['folder']} (weights {identity['weights_sha256'][:12]}, {identity['dtype']})"
    if "toy" in identity:
        return (
            f"{identity['toy']} (recipe {identity['recipe']}, weights {identity['weights_sha256'][:12]}, "
            f"{identity['dtype']})"
        )
    weights = f", weights {identity['weights_sha256'][:12]}" if "weights_sha256" in identity else ""
    return (
        f"{identity['repository']}@{identity['revision']} (commit {identity['commit'][:12]}{weights}, "
        f"{identity['dtype']})"
    )
