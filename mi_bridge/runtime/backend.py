"""The backend seam: the installed TransformerLens, read once here, chosen as one ``BACKEND`` object
(``runtime.tl3.TL3`` or ``runtime.tl4.TL4``, the interface ``runtime.base.Backend``). Only ``runtime``
knows which version runs: code above it loads models with ``BACKEND.from_hf`` / ``from_table`` /
``from_hooked_state_dict``, runs them through ``residual_at`` and the KV cache (``runtime.kv_cache``), and
addresses them by hook name (``HookedModel``). Tests read ``BACKEND.major`` for their skip markers;
benchmarks record ``BACKEND.version``.
"""

from __future__ import annotations

import importlib.metadata

from mi_bridge.runtime.base import Backend, HookedModel

__all__ = ["BACKEND", "Backend", "HookedModel", "cache_key_tag", "residual_at"]


def installed() -> Backend:
    """The backend of the installed ``transformer-lens`` (3: ``HookedTransformer``; 4: ``TransformerBridge``)."""
    version = importlib.metadata.version("transformer-lens")
    if int(version.split(".")[0]) < 4:
        from mi_bridge.runtime.tl3 import TL3

        return TL3(version)
    from mi_bridge.runtime.tl4 import TL4

    return TL4(version)


BACKEND: Backend = installed()
"""The one backend of this process, chosen once."""
residual_at = BACKEND.residual_at
"""The residual entering block ``stop_at_layer`` (after the last block when it is ``n_layers``), with TL 3's
meaning on both backends (``Backend.residual_at``)."""
cache_key_tag = BACKEND.cache_key_tag
"""What a cache key of activations adds for this backend (TL 3's keys are unchanged)."""
