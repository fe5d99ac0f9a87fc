"""The backend interface: what mi_bridge asks of TransformerLens, whichever version runs. Two classes
implement it, ``runtime.tl3.TL3`` (``HookedTransformer``) and ``runtime.tl4.TL4`` (``TransformerBridge``
in compatibility mode); ``runtime.backend`` picks one, once, as ``BACKEND``.

Code above the seam addresses a model by hook name (``blocks.{L}.hook_resid_post``), ``cfg.n_layers``,
``cfg.d_model``, ``cfg.d_vocab``, ``tokenizer``, ``run_with_hooks``, ``run_with_cache`` and ``hooks``
(``HookedModel``); both backends give these the same meaning. What differs is a method here:

- loading: TL 4 removed ``HookedTransformer``: an HF model is wrapped as it is (``TransformerBridge``), and
  ``enable_compatibility_mode()`` applies HookedTransformer's load-time processing (folded LayerNorm,
  centred writing weights and unembedding, folded value biases), so hook values match TL 3's.
- ``residual_at``: ``stop_at_layer=n_layers`` returns the final residual under TL 3 but the logits under
  TL 4, and TL 4 refuses ``start_at_layer=n_layers``.
- the KV cache: TL 3's own cache object, TL 4's Hugging Face one (``runtime.kv_cache`` is its interface,
  and calls the ``kv_*`` methods).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from mi_bridge.runtime.kv_cache import KVCache


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


class Backend(ABC):
    """One installed TransformerLens: how models load into it, and how it runs what differs between its
    versions."""

    trains_toy_pair: bool
    """Whether this TransformerLens has ``HookedTransformer``, which training the toy pair needs (a user
    told to retrain a damaged toy model is told how only where it can be done)."""

    def __init__(self, version: str):
        self.version = version
        """The installed ``transformer-lens`` version (what benchmarks record)."""
        self.major = int(version.split(".")[0])
        """Its major version (3 or 4), for tests' skip markers; code branches on methods, never on this."""

    def provenance(self) -> dict[str, str]:
        """What a run folder records of this backend (``cli.versions``)."""
        return {"transformer-lens": self.version}

    # Loading -------------------------------------------------------------------------------------------

    @abstractmethod
    def from_hf(
        self,
        hf_model: Any,
        tokenizer: Any,
        *,
        name: str,
        device: str = "cpu",
        dtype: str = "float32",
        processing: bool = True,
        n_devices: int = 1,
        revision: str | None = None,
        table_name: str | None = None,
    ) -> HookedModel:
        """A hooked model of the Hugging Face causal LM ``hf_model``, in eval mode.

        ``name``: the checkpoint's folder (holding its ``config.json``) or, under TL 3, a TransformerLens
        model name. ``table_name``: under TL 3, the entry of TransformerLens' table whose config the
        folder's weights load under, where TL 3 cannot convert the folder alone (Gemma 3); TL 4 reads the
        folder. ``tokenizer``: its Hugging Face tokenizer (loaded with ``add_bos_token=True``), or None for
        a model without one (the toy pair). ``processing``: HookedTransformer's load-time processing
        (``from_pretrained``'s defaults); off, the weights run as they are (``from_pretrained_no_processing``).
        Under TL 4 the bridge wraps ``hf_model`` itself and rewrites its weights: pass a copy to keep one.
        ``n_devices`` > 1 splits the layers across that many GPUs (TL 3's ``n_devices``; under TL 4 the
        bridge loads the checkpoint itself, at ``revision``, with ``n_devices``, which it refuses beside a
        preloaded model)."""

    @abstractmethod
    def from_table(
        self,
        repository: str,
        tokenizer: Any,
        revision: str | None,
        device: str,
        dtype: str,
        n_devices: int = 1,
    ) -> HookedModel:
        """A model of TransformerLens' table from the hub cache, at ``revision``: TL 3's
        ``HookedTransformer.from_pretrained``, the Hugging Face model in a bridge under TL 4. Raises
        ``OSError`` where the weights cannot be had."""

    @abstractmethod
    def from_hooked_state_dict(
        self,
        state_dict: dict[str, Tensor],
        *,
        build: Callable[[], HookedModel],
        n_heads: int,
        n_ctx: int,
        name: str,
        device: str,
    ) -> HookedModel:
        """A model computing the unprocessed ``HookedTransformer`` of ``state_dict`` (TL 3 keys, Pythia
        layout: the toy pair), on ``device``, in eval mode: ``build()``'s ``HookedTransformer`` holding it
        under TL 3, the same weights as a GPT-NeoX model in a bridge under TL 4 (``runtime.neox``)."""

    # Running -------------------------------------------------------------------------------------------

    def residual_at(
        self,
        model: HookedModel,
        input: Any,
        *,
        stop_at_layer: int,
        start_at_layer: int | None = None,
        fwd_hooks: Sequence = (),
        **kwargs: Any,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual entering block ``stop_at_layer`` (after the last block when it is ``n_layers``),
        from ``input`` (tokens, or the residual entering ``start_at_layer``), with ``fwd_hooks`` active:
        TL 3's ``model(input, start_at_layer=..., stop_at_layer=...)``."""
        if start_at_layer is not None and start_at_layer >= stop_at_layer:
            return input  # nothing left to run (TL 3 returns the input; TL 4 refuses start_at_layer=n_layers)
        return model.run_with_hooks(
            input,
            fwd_hooks=list(fwd_hooks),
            start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer,
            **kwargs,
        )

    @abstractmethod
    def cache_key_tag(self) -> str:
        """What a cache key of activations adds for this backend: the backends agree to ~1e-6, not bit for
        bit, so a state computed under one is never served to the other."""

    # The KV cache (``runtime.kv_cache.KVCache`` holds the store these return) --------------------------

    @abstractmethod
    def kv_store(self, model: HookedModel, batch: int, device: torch.device | str) -> Any:
        """An empty store of keys and values for ``batch`` rows, which grows with every pass given it."""

    @abstractmethod
    def kv_frozen(self, store: Any) -> Any:
        """The same keys and values, never grown again (TL 3 freezes its store in place)."""

    @abstractmethod
    def kv_repeated(self, store: Any, copies: int) -> Any:
        """A frozen store serving ``copies``·batch rows, condition-major, without storing the copies."""

    @abstractmethod
    def kv_forward_kwargs(
        self,
        cache: KVCache,
        new_positions: int,
        full_mask: Int[Tensor, "rows length"] | None,
        *,
        from_residual: bool,
    ) -> dict[str, Any]:
        """The keyword arguments of one forward pass over ``new_positions`` positions against ``cache``
        (``full_mask``: its cached and the new positions, None while nothing is padded; ``from_residual``:
        the input is a residual entering a block, ``start_at_layer``)."""


def cat_repeated(past: Tensor, new: Tensor, copies: int, dim: int) -> Tensor:
    """``torch.cat([past.repeat(copies, ...), new], dim)`` in one copy (``dim``: the position axis)."""
    batch, n_past = past.shape[0], past.shape[dim]
    shape = list(new.shape)
    shape[dim] = n_past + new.shape[dim]
    out = new.new_empty(shape)
    out.view(copies, batch, *shape[1:]).narrow(dim + 1, 0, n_past).copy_(past.expand(copies, *past.shape))
    out.narrow(dim, n_past, new.shape[dim]).copy_(new)
    return out
