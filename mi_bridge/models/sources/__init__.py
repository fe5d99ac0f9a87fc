"""Where a model comes from: one module per kind of source behind one interface (``base.ModelSource``),
and the one lookup from a name to its source (``source_for``) and spec (``spec_of``).

| kind | module | a name of it | identity |
|---|---|---|---|
| toy | ``toy`` | ``toy-sender`` (a toy pair's family) | recipe hash, weights' SHA-256, dtype |
| packaged | ``packaged`` (fetching: ``fetch``) | ``smollm2-135m`` | GGUF hash, quantization, weights, dtype |
| folder | ``folder`` | a path holding a ``config.json`` | path, weights' hashes, dtype |
| table | ``table`` | ``pythia-160m``, an alias, ``EleutherAI/pythia-160m`` | repository, revision, commit, weights, dtype |
| hub | ``hub`` | another ``org/name`` | as the table's |

Shared by several: the hub cache (``hub_cache``) and the content hashes that identities are made of
(``identity``).
"""

from __future__ import annotations

from mi_bridge.errors import UserError
from mi_bridge.models.sources.base import ModelSource, ModelSpec
from mi_bridge.models.sources.folder import FolderSource
from mi_bridge.models.sources.hub import HubSource
from mi_bridge.models.sources.packaged import PackagedSource
from mi_bridge.models.sources.table import UNKNOWN, TableSource
from mi_bridge.models.sources.toy import ToySource

__all__ = ["PRETRAINED", "TOY", "ModelSource", "ModelSpec", "source_for", "spec_of"]

TOY = ToySource()
"""The toy pair's source: a toy family's models are looked up here only."""
PRETRAINED: tuple[ModelSource, ...] = (PackagedSource(), FolderSource(), TableSource(), HubSource())
"""Every other family's sources, in the order a name is probed: a packaged model's name, a local folder
holding a ``config.json``, a name or alias of TransformerLens' table, a hub repository id (``org/name``)."""
if len({source.kind for source in (TOY, *PRETRAINED)}) != 1 + len(PRETRAINED):
    raise RuntimeError("two model sources of one kind")


def source_for(name: str, *, toy: bool = False) -> ModelSource:
    """The source of ``name``: the toy pair's for a toy family (``toy``), else the first of ``PRETRAINED``
    that claims it; none is one ``UserError``."""
    if toy:
        return TOY
    for source in PRETRAINED:
        if source.claims(name):
            return source
    raise UserError(f"unknown model {name!r}: {UNKNOWN}")


def spec_of(name: str, revision: str | None = None, *, toy: bool = False) -> ModelSpec:
    """Shape and tokenizer of ``name`` (at ``revision``), without weights, from its source."""
    return source_for(name, toy=toy).spec(name, revision)
