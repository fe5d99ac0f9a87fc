"""mi_bridge: can a small model hand a useful intermediate state to a larger one through a linear map
between their residual streams? One controlled protocol, any model pair, with causal diagnostics."""

__version__ = "0.1.0"  # before the imports: submodules read it

from mi_bridge.bridge import LinearBridge, fit_quality, fit_report, ridge_path
from mi_bridge.capture import capture_resid_post
from mi_bridge.config import ExperimentConfig, UserError
from mi_bridge.evaluate import Condition, evaluate_conditions, standard_conditions
from mi_bridge.inject import apply_injection, inject_residual, rescale_to, run_with_injection
from mi_bridge.task import TaskItems, sample_items

__all__ = [
    "Condition",
    "ExperimentConfig",
    "LinearBridge",
    "TaskItems",
    "UserError",
    "apply_injection",
    "capture_resid_post",
    "evaluate_conditions",
    "fit_quality",
    "fit_report",
    "inject_residual",
    "rescale_to",
    "ridge_path",
    "run_with_injection",
    "sample_items",
    "standard_conditions",
]
