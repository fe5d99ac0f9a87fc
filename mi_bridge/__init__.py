"""mi_bridge: can a small model hand a useful intermediate state to a larger one through a linear map
between their residual streams? One controlled protocol, any model pair, with causal diagnostics.

The public names are imported on first use, so that a command can reject bad input before torch and
TransformerLens are imported (seconds on a small machine).
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Condition": "core.evaluate",
    "ExperimentConfig": "config",
    "KVFuser": "bridges.kv_fuser",
    "KVLinearBridge": "bridges.kv",
    "LayerMap": "bridges.kv",
    "LearnedPrefix": "bridges.kv_fuser",
    "LinearBridge": "bridges.ridge",
    "ModelPair": "models.loading",
    "RunResult": "run",
    "TaskItems": "models.task",
    "UserError": "errors",
    "apply_injection": "core.inject",
    "capture_kv": "runtime.kv_entries",
    "capture_resid_post": "core.capture",
    "delivered_cache": "runtime.kv_entries",
    "evaluate_conditions": "core.evaluate",
    "fit_quality": "bridges.ridge",
    "fit_report": "bridges.ridge",
    "gate_hooks": "runtime.kv_entries",
    "inject_residual": "core.inject",
    "load_bridge": "bridges.base",
    "load_model": "api",
    "load_pair": "api",
    "rescale_to": "core.inject",
    "resid_states": "core.capture",
    "ridge_path": "bridges.ridge",
    "run_experiment": "api",
    "run_with_injection": "core.inject",
    "resolve_device": "core.device",
    "sample_items": "models.task",
    "score": "core.evaluate",
    "select_conditions": "core.evaluate",
    "standard_conditions": "core.evaluate",
    "train_kv_source": "bridges.kv_training",
}
__all__ = sorted(_PUBLIC)


def __dir__() -> list[str]:
    return sorted({"__version__", *_PUBLIC})


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f"mi_bridge.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'mi_bridge' has no attribute {name!r}")
