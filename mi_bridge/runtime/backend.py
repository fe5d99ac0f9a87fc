"""The runtime half of the backend seam, the package's bottom floor: which TransformerLens runs
(``TL_MAJOR``), what mi_bridge uses of a model (``HookedModel``), ``residual_at`` and the KV cache
(``runtime.kv_cache``). Only this package branches on the TransformerLens version; the loaders that
build models for either backend are ``models.backends``.

Code above the seam addresses a model by hook name (``blocks.{L}.hook_resid_post``), ``cfg.n_layers``,
``cfg.d_model``, ``cfg.d_vocab``, ``tokenizer``, ``run_with_hooks``, ``run_with_cache`` and ``hooks``;
both backends give these the same meaning. What differs is kept here:

- TL 4 removed ``HookedTransformer``: an HF model is wrapped as it is (``TransformerBridge``), and
  ``enable_compatibility_mode()`` applies HookedTransformer's load-time processing (folded LayerNorm,
  centred writing weights and unembedding, folded value biases), so hook values match TL 3's.
- ``stop_at_layer=n_layers`` returns the final residual under TL 3 but the logits under TL 4, and TL 4
  refuses ``start_at_layer=n_layers``: ``residual_at`` gives TL 3's meaning on both.
- The KV cache differs too (TL 3's own cache object, TL 4's Hugging Face one): ``runtime.kv_cache`` is
  its one interface.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

TL_VERSION: str = importlib.metadata.version("transformer-lens")
TL_MAJOR: int = int(TL_VERSION.split(".")[0])

HOOKED_TRANSFORMER: bool = TL_MAJOR < 4
"""Whether TransformerLens' ``HookedTransformer`` exists (TL 3): training the toy pair needs it, and
models load into it; under TL 4 they load into a ``TransformerBridge``."""


def cache_key_tag() -> str:
    """What a cache key of activations adds for this backend: the backends agree to ~1e-6, not bit for
    bit, so a state computed under one is never served to the other (TL 3's keys are unchanged)."""
    return "" if HOOKED_TRANSFORMER else f"|transformer-lens {TL_MAJOR}"


@runtime_checkable
class HookedModel(Protocol):
    """What mi_bridge uses of a model, met by TL 3's ``HookedTransformer`` and TL 4's ``TransformerBridge``
    (type hints name this instead of importing a class that one of them lacks)."""

    cfg: Any
    """``n_layers``, ``d_model``, ``d_vocab``, ``n_heads``, ``d_head``, ``d_mlp``, ``device``."""
    tokenizer: Any

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Any: ...


def residual_at(
    model: HookedModel,
    input: Any,
    *,
    stop_at_layer: int,
    start_at_layer: int | None = None,
    fwd_hooks: Sequence = (),
    **kwargs: Any,
) -> Float[Tensor, "batch pos d_model"]:
    """The residual entering block ``stop_at_layer`` (after the last block when it is ``n_layers``), from
    ``input`` (tokens, or the residual entering ``start_at_layer``), with ``fwd_hooks`` active: TL 3's
    ``model(input, start_at_layer=..., stop_at_layer=...)`` on both backends."""
    n_layers = model.cfg.n_layers
    if start_at_layer is not None and start_at_layer >= stop_at_layer:
        return input  # nothing left to run (TL 3 returns the input; TL 4 refuses start_at_layer=n_layers)
    if TL_MAJOR < 4 or stop_at_layer < n_layers:
        return model.run_with_hooks(
            input,
            fwd_hooks=list(fwd_hooks),
            start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer,
            **kwargs,
        )
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(act: Tensor, hook: Any) -> None:
        # TL 4 would run on to the logits (the unembedding of every position): its own stop signal after
        # the last block returns that block's output instead (the KV cache has every layer by then)
        raise StopAtLayerException(act)

    last = (f"blocks.{n_layers - 1}.hook_resid_post", stop)
    return model.run_with_hooks(input, fwd_hooks=[*fwd_hooks, last], start_at_layer=start_at_layer, **kwargs)
