"""A local Hugging Face checkpoint folder (one holding a ``config.json``): shape from its ``config.json``,
tokenizer from its files, loaded through TransformerLens' converters. Its identity is its path and its
weights' content, so a folder needs no commit. The hub and packaged sources load their folders the same
way (``hooked_from_folder``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mi_bridge.errors import UserError
from mi_bridge.models.sources.base import CheckTokenizer, ModelSource, ModelSpec, hf_tokenizer
from mi_bridge.models.sources.hub_cache import shape_of
from mi_bridge.models.sources.identity import weights_digest
from mi_bridge.runtime.backend import BACKEND, HookedModel


def local_folder(name: str) -> Path | None:
    """``name`` as a local Hugging Face checkpoint folder (one holding a ``config.json``), else None."""
    path = Path(name).expanduser()
    return path.resolve() if (path / "config.json").is_file() else None


class FolderSource(ModelSource):
    kind = "folder"

    def claims(self, name: str) -> bool:
        return local_folder(name) is not None

    def spec(self, name: str, revision: str | None = None) -> ModelSpec:
        if revision is not None:
            raise UserError(f"{name} is a local folder; it takes no revision")
        folder = local_folder(name)
        n_layers, d_vocab, tokenizer = read_folder(folder)
        return ModelSpec(name, n_layers, d_vocab, self, tokenizer=tokenizer, folder=folder)

    def load(
        self, spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
    ) -> tuple[HookedModel, dict | None]:
        model = hooked_from_folder(spec.folder, device, dtype, n_devices)
        return model, folder_identity(spec.folder, dtype)


def folder_identity(folder: Path, dtype: str) -> dict:
    """A local Hugging Face checkpoint folder: its path (for the reader) and its weights' hashes."""
    return {"folder": str(folder.resolve()), "weights_sha256": weights_digest(folder), "dtype": dtype}


def read_folder(folder: Path) -> tuple[int, int, object]:
    """``(n_layers, d_vocab, tokenizer)`` of a checkpoint folder, without its weights."""
    try:
        tokenizer = folder_tokenizer(folder)
    except OSError:
        raise UserError(
            f"{folder} holds no tokenizer (tokenizer.json or the files AutoTokenizer reads)"
        ) from None
    return *folder_shape(folder), tokenizer


def folder_tokenizer(folder: Path):
    """The fast ``CheckTokenizer`` where the folder has a ``tokenizer.json``, else the Hugging Face one."""
    if (folder / "tokenizer.json").is_file():
        return CheckTokenizer(folder / "tokenizer.json")
    return hf_tokenizer(str(folder), None)


def folder_shape(folder: Path) -> tuple[int, int]:
    shape = shape_of(json.loads((folder / "config.json").read_text()))
    if shape is None:
        raise UserError(f"{folder}/config.json names no layer count or vocabulary size mi_bridge can read")
    return shape


def hooked_from_folder(
    folder: Path, device: str, dtype: str, n_devices: int = 1, table_name: str | None = None
) -> HookedModel:
    """A hooked model of the Hugging Face checkpoint in ``folder``, processed as
    ``HookedTransformer.from_pretrained`` processes a hub model (folded norms, centred writing weights and
    unembedding): through TransformerLens 3's own config and weight converters, which take a local path
    (or, given ``table_name``, that entry of its table: Gemma 3's config is known by name only), or
    TransformerLens 4's bridge in compatibility mode (``BACKEND.from_hf``)."""
    from transformers import AutoModelForCausalLM

    try:  # not a causal LM, or an architecture TransformerLens has no converter for: one line
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = hf_tokenizer(str(folder), None)
        return BACKEND.from_hf(
            hf_model,
            tokenizer,
            name=str(folder),
            device=device,
            dtype=dtype,
            n_devices=n_devices,
            table_name=table_name,
        )
    except Exception as err:  # each library and version raises its own kind here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"TransformerLens cannot convert {folder} to a hooked model: {first}") from None
