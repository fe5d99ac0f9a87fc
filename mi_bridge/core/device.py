"""Where tensors live: the one device rule (docs/DESIGN.md, "Devices") and the helpers that apply it.

- Models, and the work of one batch through them, run on the compute device (``--device``; ``auto``:
  CUDA when available, else the CPU, as TransformerLens' ``get_device`` chooses).
- Captured activations are stored on the CPU (in memory and on disk) and moved to the compute device
  one batch at a time, by the code that feeds that batch to a model.
- Statistics, fitted bridges and results live on the CPU. The closed-form ridge fit runs there too, in
  float64 with float32 products: its inputs are the cached states, it takes about a second at
  d_model <= 1024, and it then gives the same bridge on every machine. Bridges trained by gradient steps
  through a model (the usability bridge) or over many small batches (the seed paper's SGD bridge) train
  on the compute device and are returned on the CPU.

Only torch is imported here: the device is resolved during the input checks, before TransformerLens.
"""

from __future__ import annotations

import os

import torch

from mi_bridge.config import AUTO_DEVICE, FLOAT16_ON_CPU
from mi_bridge.errors import UserError

AUTO = AUTO_DEVICE


def resolve_device(name: str) -> str:
    """The torch device a run uses for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``): ``auto``
    is resolved as TransformerLens' ``get_device`` does (MPS only with TRANSFORMERLENS_ALLOW_MPS=1); a
    device this machine lacks is a UserError."""
    if name == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        mps = torch.backends.mps.is_available() and torch.backends.mps.is_built()
        return "mps" if mps and os.environ.get("TRANSFORMERLENS_ALLOW_MPS", "") == "1" else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise UserError(f"device {name!r} is not available on this machine (no such CUDA GPU)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} is not available on this machine")
    return name


def check_dtype(name: str, dtype: str) -> None:
    """float16 needs a GPU: one clear line where the device (``auto`` resolved) is the CPU."""
    if dtype == "float16" and device_type(name) == "cpu":
        raise UserError(FLOAT16_ON_CPU)


def check_devices(name: str, n_devices: int) -> None:
    """A model split across ``n_devices`` GPUs needs CUDA and that many GPUs: else one clear line."""
    if n_devices > 1 and (device_type(name) != "cuda" or torch.cuda.device_count() < n_devices):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise UserError(f"--n-devices {n_devices} needs {n_devices} CUDA GPUs; this machine has {found}")


def placement(model: torch.nn.Module) -> list[str]:
    """Every device a model's weights are on, in order of first use (one, unless split across GPUs)."""
    return list(dict.fromkeys(str(p.device) for p in model.parameters()))


def device_type(name: str) -> str:
    """``cpu``, ``cuda``, ... of a device name; ``auto`` counts as what it resolves to here."""
    return torch.device(resolve_device(name) if name == AUTO else name).type


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights are on (where its inputs must go)."""
    return next(model.parameters()).device


def describe(device: torch.device | str) -> dict:
    """What results.json and config.json record: the device used, with its index, and the GPU's name
    (None off CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"device": str(device), "gpu_name": None}
    index = torch.cuda.current_device() if device.index is None else device.index
    return {"device": f"cuda:{index}", "gpu_name": torch.cuda.get_device_name(index)}
