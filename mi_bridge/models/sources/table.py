"""A model of TransformerLens' table (``pythia-160m``, ``EleutherAI/pythia-410m``, an alias): config and
tokenizer from the Hugging Face cache (online, these small files may be downloaded), the weights loaded
by TransformerLens (``BACKEND.from_table``). Its identity is a hub model's: repository, revision, the
commit the revision names in the cache, and the weights' hashes."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from mi_bridge.errors import UserError
from mi_bridge.models.sources import hub_cache
from mi_bridge.models.sources.base import CheckTokenizer, ModelSource, ModelSpec, hf_tokenizer
from mi_bridge.runtime.backend import BACKEND, HookedModel

UNKNOWN = (
    "not a TransformerLens model name (e.g. pythia-160m), a Hugging Face repository id (org/name) or a "
    "local folder holding a config.json"
)


@functools.cache
def table_names() -> dict[str, str] | None:
    """Every name and alias of TransformerLens' table (lower case) -> its official name, from
    ``transformer_lens/supported_models.py``, which is pure data: read from the installed package without
    importing TransformerLens (~6 s here), so that a bad name fails fast. None where the package keeps no
    such file."""
    package = importlib.util.find_spec("transformer_lens")  # locates, does not import
    table_file = Path(package.origin).with_name("supported_models.py") if package and package.origin else None
    if table_file is None or not table_file.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_transformer_lens_supported_models", table_file)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    names = {official.lower(): official for official in table.OFFICIAL_MODEL_NAMES}
    for official in table.OFFICIAL_MODEL_NAMES:
        names.update({alias.lower(): official for alias in table.MODEL_ALIASES.get(official, [])})
    return names


def official_name(name: str) -> str:
    """TransformerLens' official name (the Hugging Face repository) of a model name or alias, from the
    table its ``get_official_model_name`` reads (``table_names``); ``UserError`` if it lists no such name."""
    names = table_names()
    if names is None:  # another layout: TransformerLens' own function
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            return get_official_model_name(name)
        except ValueError:
            raise UserError(f"unknown model {name!r}: {UNKNOWN}") from None
    if name.lower() not in names:
        raise UserError(f"unknown model {name!r}: {UNKNOWN}")
    return names[name.lower()]


def check_tokenizer(repository: str, revision: str | None):
    """The fast ``CheckTokenizer`` where the snapshot has a ``tokenizer.json``, else the Hugging Face one."""
    try:
        return CheckTokenizer(hub_cache.hub_file(repository, "tokenizer.json", revision))
    except OSError:
        return hf_tokenizer(repository, revision)


class TableSource(ModelSource):
    takes_revision = True
    kind = "table"

    def claims(self, name: str) -> bool:
        try:
            official_name(name)
        except UserError:
            return False
        return True

    def spec(self, name: str, revision: str | None = None) -> ModelSpec:
        """Config and tokenizer, without the weights. The layer count and vocabulary come from the
        checkpoint's ``config.json``; ``load`` checks them against the model TransformerLens builds."""
        repository = official_name(name)
        label = repository if revision is None else f"{repository} (revision {revision})"
        commit = hub_cache.resolve_commit(repository, revision)
        if hub_cache.offline() and (commit is None or not hub_cache.weights_cached(repository, commit)):
            raise hub_cache.missing_files(label, "weights")
        # The revision goes to Hugging Face's from_pretrained through TransformerLens' **kwargs, so config,
        # tokenizer and weights all come from one snapshot (TransformerLens' checkpoint_value covers Pythia
        # and stanford-crfm steps only, and reads the config and tokenizer from main). A resolved commit
        # pins it.
        at = commit or revision
        try:
            shape = hub_cache.config_shape(repository, at)
            tokenizer = check_tokenizer(repository, at)
        except OSError:
            raise hub_cache.missing_files(label, "config and tokenizer files") from None
        if shape is None:  # a config.json without the usual names: TransformerLens' converter reads it
            from transformer_lens.loading_from_pretrained import get_pretrained_model_config

            config = get_pretrained_model_config(repository, revision=at)
            shape = config.n_layers, config.d_vocab
        return ModelSpec(name, *shape, self, repository, revision, commit, tokenizer)

    def load(
        self, spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
    ) -> tuple[HookedModel, dict | None]:
        at = spec.commit or spec.revision
        try:
            tokenizer = hf_tokenizer(spec.repository, at)
            model = BACKEND.from_table(spec.repository, tokenizer, at, device, dtype, n_devices)
        except OSError:
            raise hub_cache.missing_files(spec.repository, "weights") from None
        built = model.cfg.n_layers, model.cfg.d_vocab
        if built != (spec.n_layers, spec.d_vocab):  # the checks must have seen the model that runs
            raise RuntimeError(
                f"{spec.repository}: config.json gave (n_layers, d_vocab) = {(spec.n_layers, spec.d_vocab)}, "
                f"TransformerLens built {built}"
            )
        # Resolved again after loading: a download may have just put the revision in the cache.
        commit = spec.commit or hub_cache.resolve_commit(spec.repository, spec.revision)
        if commit is None:
            return model.eval(), None
        return model.eval(), hub_cache.pretrained_identity(spec.repository, spec.revision, commit, dtype)
