"""A hub model that TransformerLens' table does not list (a repository id, ``org/name``): its snapshot in
the Hugging Face cache (downloaded once when online), read and loaded as a local folder is, by
TransformerLens' converters where they know its architecture. Its identity is a hub model's: repository,
revision, commit and the weights' hashes."""

from __future__ import annotations

from mi_bridge.errors import UserError
from mi_bridge.models.sources import hub_cache
from mi_bridge.models.sources.base import ModelSource, ModelSpec
from mi_bridge.models.sources.folder import hooked_from_folder, read_folder
from mi_bridge.runtime.backend import HookedModel


class HubSource(ModelSource):
    takes_revision = True
    kind = "hub"

    def claims(self, name: str) -> bool:
        return "/" in name  # asked after TransformerLens' table: a repository id it does not list

    def spec(self, name: str, revision: str | None = None) -> ModelSpec:
        label = name if revision is None else f"{name} (revision {revision})"
        commit = hub_cache.resolve_commit(name, revision)
        if commit is None and not hub_cache.offline():
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(name, revision=revision)
            except Exception as err:  # hub errors are not OSErrors in every version
                raise UserError(f"cannot download {label}: {type(err).__name__}: {err}") from None
            commit = hub_cache.resolve_commit(name, revision)
        if commit is None or not hub_cache.weights_cached(name, commit):
            raise hub_cache.missing_files(label, "weights")
        snapshot = hub_cache.repo_folder(name) / "snapshots" / commit
        n_layers, d_vocab, tokenizer = read_folder(snapshot)
        return ModelSpec(name, n_layers, d_vocab, self, name, revision, commit, tokenizer, snapshot)

    def load(
        self, spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
    ) -> tuple[HookedModel, dict | None]:
        model = hooked_from_folder(spec.folder, device, dtype, n_devices)
        return model, hub_cache.pretrained_identity(spec.repository, spec.revision, spec.commit, dtype)
