"""What is known of a model before any weight loads: its spec (name, layers, vocabulary, exact checkpoint,
tokenizer), read from a toy recipe, a packaged folder or a pretrained model's config and tokenizer files,
so that every check can run (and bad input fail) in a second."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mi_bridge.errors import UserError
from mi_bridge.models import identity, packaged
from mi_bridge.models.language import TOY_WORDS
from mi_bridge.models.toy import TOY_MODELS


@dataclass
class ModelSpec:
    """What is known of a model before any weight is loaded."""

    name: str
    n_layers: int
    d_vocab: int
    repository: str | None = None
    """Pretrained models: the Hugging Face repository (TransformerLens' official name)."""
    revision: str | None = None
    """The revision asked for (None: ``main``)."""
    commit: str | None = None
    """The commit the revision names in the local cache; None if the cache does not hold it yet."""
    tokenizer: object | None = None
    folder: Path | None = None
    """A Hugging Face checkpoint folder on disk: a packaged model (``mi_bridge.models.packaged``), a local
    folder, or the cached snapshot of a hub model that TransformerLens' table does not list."""
    in_table: bool = True
    """Whether TransformerLens' table lists the model (it then loads through ``from_pretrained``)."""


def missing_files(name: str, what: str) -> UserError:
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    how = (
        "HF_HUB_OFFLINE=1 forbids downloading them" if identity.offline() else "they could not be downloaded"
    )
    return UserError(
        f"{what} for {name} are not in the Hugging Face cache ({cache}) and {how}: download them once with "
        f"network access (HookedTransformer.from_pretrained({name!r})) or point HF_HOME at a cache that holds them"
    )


def toy_spec(name: str) -> ModelSpec:
    if name not in TOY_MODELS:
        raise UserError(f"unknown toy model {name!r}; choose one of {', '.join(TOY_MODELS)}")
    return ModelSpec(name=name, n_layers=TOY_MODELS[name].n_layers, d_vocab=len(TOY_WORDS))


UNKNOWN = (
    "not a TransformerLens model name (e.g. pythia-160m), a Hugging Face repository id (org/name) or a "
    "local folder holding a config.json"
)


def official_name(name: str) -> str:
    """TransformerLens' official name (the Hugging Face repository) of a model name or alias, from the
    table its ``get_official_model_name`` reads. That table, ``transformer_lens/supported_models.py``,
    is pure data: it is read from the installed package without importing TransformerLens (~6 s here),
    so that a bad name fails fast."""
    package = importlib.util.find_spec("transformer_lens")  # locates, does not import
    table_file = Path(package.origin).with_name("supported_models.py") if package and package.origin else None
    if table_file is None or not table_file.is_file():  # another layout: TransformerLens' own function
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            return get_official_model_name(name)
        except ValueError:
            raise UserError(f"unknown model {name!r}: {UNKNOWN}") from None
    spec = importlib.util.spec_from_file_location("_transformer_lens_supported_models", table_file)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    names = {official.lower(): official for official in table.OFFICIAL_MODEL_NAMES}
    for official in table.OFFICIAL_MODEL_NAMES:
        names.update({alias.lower(): official for alias in table.MODEL_ALIASES.get(official, [])})
    if name.lower() not in names:
        raise UserError(f"unknown model {name!r}: {UNKNOWN}")
    return names[name.lower()]


class CheckTokenizer:
    """What the checks need of a tokenizer (vocabulary, encoding), read from its ``tokenizer.json`` with the
    Rust ``tokenizers`` library, which imports in milliseconds where ``transformers`` takes about 3 s here.
    The models run with the Hugging Face tokenizer ``load_model`` builds from the same snapshot;
    ``load_pair`` checks that both encode the task's text alike."""

    bos_token_id = None  # the checks build no prompt

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(path))

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)


def hf_tokenizer(repository: str, revision: str | None):
    """The Hugging Face tokenizer the model runs with. ``add_bos_token=True`` as TransformerLens' own loader
    sets it (else TransformerLens reloads the tokenizer from ``main``). Raises ``OSError`` if missing."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(repository, revision=revision, add_bos_token=True)


def check_tokenizer(repository: str, revision: str | None):
    """The fast ``CheckTokenizer`` where the snapshot has a ``tokenizer.json``, else the Hugging Face one."""
    try:
        return CheckTokenizer(identity.hub_file(repository, "tokenizer.json", revision))
    except OSError:
        return hf_tokenizer(repository, revision)


def packaged_spec(name: str, revision: str | None = None) -> ModelSpec:
    """A fetched packaged model (``mi_bridge.models.packaged``): shape from its folder's ``config.json``, tokenizer
    from its ``tokenizer.json``. Not fetched yet: one ``UserError`` that names the fetch command."""
    if revision is not None:
        raise UserError(f"{name} is a packaged model with one version; it takes no revision")
    packaged.source(name)
    where = packaged.folder(name)
    return ModelSpec(
        name, *folder_shape(where), tokenizer=CheckTokenizer(where / "tokenizer.json"), folder=where
    )


def local_folder(name: str) -> Path | None:
    """``name`` as a local Hugging Face checkpoint folder (one holding a ``config.json``), else None."""
    path = Path(name).expanduser()
    return path.resolve() if (path / "config.json").is_file() else None


def folder_tokenizer(folder: Path):
    """The fast ``CheckTokenizer`` where the folder has a ``tokenizer.json``, else the Hugging Face one."""
    if (folder / "tokenizer.json").is_file():
        return CheckTokenizer(folder / "tokenizer.json")
    return hf_tokenizer(str(folder), None)


def folder_shape(folder: Path) -> tuple[int, int]:
    shape = identity.shape_of(json.loads((folder / "config.json").read_text()))
    if shape is None:
        raise UserError(f"{folder}/config.json names no layer count or vocabulary size mi_bridge can read")
    return shape


def folder_spec(name: str, folder: Path, revision: str | None = None) -> ModelSpec:
    """A local checkpoint folder: shape from its ``config.json``, tokenizer from its files. Its identity is
    its weights' content (``identity.folder_identity``), so a folder needs no commit."""
    if revision is not None:
        raise UserError(f"{name} is a local folder; it takes no revision")
    try:
        tokenizer = folder_tokenizer(folder)
    except OSError:
        raise UserError(
            f"{folder} holds no tokenizer (tokenizer.json or the files AutoTokenizer reads)"
        ) from None
    return ModelSpec(name, *folder_shape(folder), tokenizer=tokenizer, folder=folder, in_table=False)


def hub_spec(name: str, revision: str | None) -> ModelSpec:
    """A hub model that TransformerLens' table does not list: its cached snapshot, converted from the folder
    by TransformerLens' converters where they know its architecture (``loading.hooked_from_folder``)."""
    label = name if revision is None else f"{name} (revision {revision})"
    commit = identity.resolve_commit(name, revision)
    if commit is None and not identity.offline():
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(name, revision=revision)
        except Exception as err:  # hub errors are not OSErrors in every version
            raise UserError(f"cannot download {label}: {type(err).__name__}: {err}") from None
        commit = identity.resolve_commit(name, revision)
    if commit is None or not identity.weights_cached(name, commit):
        raise missing_files(label, "weights")
    snapshot = identity.repo_folder(name) / "snapshots" / commit
    spec = folder_spec(name, snapshot)
    return ModelSpec(
        name, spec.n_layers, spec.d_vocab, name, revision, commit, spec.tokenizer, snapshot, in_table=False
    )


def pretrained_spec(name: str, revision: str | None = None) -> ModelSpec:
    """Config and tokenizer of a TransformerLens pretrained model, without its weights (offline, they come
    from the Hugging Face cache; online, these small files may be downloaded). The layer count and
    vocabulary come from the checkpoint's ``config.json``; ``load_model`` checks them against the model
    TransformerLens builds. A packaged model's name reads its fetched folder instead."""
    if packaged.is_packaged(name):
        return packaged_spec(name, revision)
    if (folder := local_folder(name)) is not None:
        return folder_spec(name, folder, revision)
    try:
        repository = official_name(name)
    except UserError:
        if "/" not in name:  # not a hub repository id either
            raise
        return hub_spec(name, revision)
    label = repository if revision is None else f"{repository} (revision {revision})"
    commit = identity.resolve_commit(repository, revision)
    if identity.offline() and (commit is None or not identity.weights_cached(repository, commit)):
        raise missing_files(label, "weights")
    # The revision goes to Hugging Face's from_pretrained through TransformerLens' **kwargs, so config,
    # tokenizer and weights all come from one snapshot (TransformerLens' checkpoint_value covers Pythia
    # and stanford-crfm steps only, and reads the config and tokenizer from main). A resolved commit pins it.
    at = commit or revision
    try:
        shape = identity.config_shape(repository, at)
        tokenizer = check_tokenizer(repository, at)
    except OSError:
        raise missing_files(label, "config and tokenizer files") from None
    if shape is None:  # a config.json without the usual names: TransformerLens' converter reads it
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        config = get_pretrained_model_config(repository, revision=at)
        shape = config.n_layers, config.d_vocab
    return ModelSpec(name, *shape, repository, revision, commit, tokenizer)
