"""mi_bridge: can a small model hand a useful intermediate state to a larger one through a linear map
between their residual streams? One controlled protocol, any model pair, with causal diagnostics.

The public names are imported on first use, so that a command can reject bad input before torch and
TransformerLens are imported (seconds on a small machine).
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Condition": "evaluate",
    "ExperimentConfig": "config",
    "LinearBridge": "bridge",
    "TaskItems": "task",
    "UserError": "config",
    "apply_injection": "inject",
    "capture_resid_post": "capture",
    "evaluate_conditions": "evaluate",
    "fit_quality": "bridge",
    "fit_report": "bridge",
    "inject_residual": "inject",
    "load_model": "api",
    "load_pair": "models",
    "rescale_to": "inject",
    "ridge_path": "bridge",
    "run_with_injection": "inject",
    "resolve_device": "device",
    "sample_items": "task",
    "standard_conditions": "evaluate",
}
__all__ = sorted(_PUBLIC)


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f"mi_bridge.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'mi_bridge' has no attribute {name!r}")
