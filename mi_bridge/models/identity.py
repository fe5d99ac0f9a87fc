"""The exact checkpoint behind a model, so that a cached state is reused only for the weights that made it.

A checkpoint is identified by its content: the SHA-256 of every weight file. A pretrained model is its
repository, the commit its revision resolves to in the Hugging Face cache (``refs/<revision>`` names a
folder ``snapshots/<commit>``), those hashes and the dtype it runs in; a local folder is its path, the
hashes and the dtype; a toy model is its recipe hash, the SHA-256 of its weights and its dtype. So two
caches that hold different weights under one name and one commit (a snapshot edited in place, a copied
cache) never share cached activations.

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

COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def repo_folder(repository: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache() / repo_folder_name(repo_id=repository, repo_type="model")


def resolve_commit(repository: str, revision: str | None) -> str | None:
    """The commit that ``revision`` (default ``main``) of ``repository`` names in the local Hugging Face
    cache; None when the cache does not hold that revision. A 40-hex revision is itself the commit."""
    revision = revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    folder = repo_folder(repository)
    try:
        commit = (folder / "refs" / revision).read_text().strip()
    except (OSError, ValueError):
        return None
    return commit if COMMIT.fullmatch(commit) and (folder / "snapshots" / commit).is_dir() else None


def weights_cached(repository: str, commit: str) -> bool:
    """Whether the snapshot holds a weights file (safetensors, PyTorch .bin or .pth, sharded or not)."""
    snapshot = repo_folder(repository) / "snapshots" / commit
    return snapshot.is_dir() and any(p.suffix in WEIGHT_SUFFIXES for p in snapshot.rglob("*"))


def hub_file(repository: str, filename: str, revision: str | None) -> Path:
    """A small file of a snapshot: from the cache offline, else possibly downloaded. ``OSError`` if missing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repository, filename, revision=revision))
    except EntryNotFoundError as error:  # not an OSError in every version
        raise OSError(str(error)) from None


LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
"""Where Hugging Face configs keep the layer count (GPT-NeoX/Llama/OPT, GPT-2/GPT-J, GPT-Neo, others)."""


def config_shape(repository: str, revision: str | None) -> tuple[int, int] | None:
    """``(n_layers, d_vocab)`` from the checkpoint's ``config.json`` (from the cache offline; online this
    small file may be downloaded), or None if it names them otherwise. Raises ``OSError`` if the file
    cannot be had."""
    return shape_of(json.loads(hub_file(repository, "config.json", revision).read_text()))


def shape_of(config: dict) -> tuple[int, int] | None:
    """``(n_layers, d_vocab)`` of a Hugging Face ``config.json``, or None if it names them otherwise."""
    n_layers = next((config[key] for key in LAYER_KEYS if isinstance(config.get(key), int)), None)
    d_vocab = config.get("vocab_size")
    return (n_layers, d_vocab) if isinstance(n_layers, int) and isinstance(d_vocab, int) else None


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


def pretrained_identity(repository: str, revision: str | None, commit: str, dtype: str) -> dict:
    snapshot = repo_folder(repository) / "snapshots" / commit
    return {
        "repository": repository,
        "revision": revision or "main",
        "commit": commit,
        "weights_sha256": weights_digest(snapshot),
        "dtype": dtype,
    }


def folder_identity(folder: Path, dtype: str) -> dict:
    """A local Hugging Face checkpoint folder: its path (for the reader) and its weights' hashes."""
    return {"folder": str(folder.resolve()), "weights_sha256": weights_digest(folder), "dtype": dtype}


def toy_identity(name: str, recipe_digest: str, model, dtype: str) -> dict:
    return {"toy": name, "recipe": recipe_digest, "weights_sha256": weights_sha256(model), "dtype": dtype}


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
