"""The Hugging Face hub cache, shared by the sources that read it (TransformerLens' table, hub snapshots):
where a repository's snapshots are, which commit a revision names, its small files, and the identity of a
cached snapshot."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mi_bridge.errors import UserError
from mi_bridge.models.sources.identity import WEIGHT_SUFFIXES, weights_digest

COMMIT = re.compile(r"[0-9a-f]{40}")


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


def pretrained_identity(repository: str, revision: str | None, commit: str, dtype: str) -> dict:
    snapshot = repo_folder(repository) / "snapshots" / commit
    return {
        "repository": repository,
        "revision": revision or "main",
        "commit": commit,
        "weights_sha256": weights_digest(snapshot),
        "dtype": dtype,
    }


def missing_files(name: str, what: str) -> UserError:
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    how = "HF_HUB_OFFLINE=1 forbids downloading them" if offline() else "they could not be downloaded"
    return UserError(
        f"{what} for {name} are not in the Hugging Face cache ({cache}) and {how}: download them once with "
        f"network access (HookedTransformer.from_pretrained({name!r})) or point HF_HOME at a cache that holds them"
    )
