"""The model-source interface: where a model comes from decides how its shape and tokenizer are read
without weights (``spec``: fast, offline, so that every check runs and bad input fails in a second), how
it loads onto the backend, and what names its exact checkpoint (its identity, which keys cached
activations and is recorded in a run's config.json). One module per source; ``sources.source_for``
finds a name's."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mi_bridge.runtime.backend import HookedModel


@dataclass
class ModelSpec:
    """What is known of a model before any weight is loaded."""

    name: str
    n_layers: int
    d_vocab: int
    source: ModelSource = field(repr=False)
    """Where the model comes from: it loads the model and names its checkpoint."""
    repository: str | None = None
    """Hub models: the Hugging Face repository (TransformerLens' official name for a model of its table)."""
    revision: str | None = None
    """The revision asked for (None: ``main``)."""
    commit: str | None = None
    """The commit the revision names in the local cache; None if the cache does not hold it yet."""
    tokenizer: object | None = None
    folder: Path | None = None
    """A Hugging Face checkpoint folder on disk: a packaged model's, a local folder, or the cached snapshot of
    a hub model that TransformerLens' table does not list."""


class ModelSource(ABC):
    """One kind of model source (the toy pair, TransformerLens' table, a hub snapshot, a local folder, a
    packaged model)."""

    kind: ClassVar[str]
    pretrained: ClassVar[bool] = True
    """Whether the model runs with a Hugging Face tokenizer (every source but the toy pair's word list)."""

    takes_revision: bool = False
    """Whether a model of this source names a revision of a hub repository (``main`` when none is asked;
    a run folder records it), rather than being one version (a toy model, a folder, a packaged file)."""

    @abstractmethod
    def claims(self, name: str) -> bool:
        """Whether ``name`` is a model of this source (asked in ``sources.PRETRAINED`` order; cheap)."""

    @abstractmethod
    def spec(self, name: str, revision: str | None = None) -> ModelSpec:
        """Shape and tokenizer of ``name`` at ``revision``, without its weights; ``UserError`` on bad input."""

    @abstractmethod
    def load(
        self, spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
    ) -> tuple[HookedModel, dict | None]:
        """The model of a checked spec on the backend, in ``dtype`` (split across ``n_devices`` GPUs), in eval
        mode, with its identity (None where it cannot be resolved)."""


class CheckTokenizer:
    """What the checks need of a tokenizer (vocabulary, encoding), read from its ``tokenizer.json`` with the
    Rust ``tokenizers`` library, which imports in milliseconds where ``transformers`` takes about 3 s here.
    The models run with the Hugging Face tokenizer loaded from the same files (``hf_tokenizer``);
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
