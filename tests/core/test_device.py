"""The device rule on a machine without a GPU: ``auto`` resolves as TransformerLens would, an absent device
is one line, and the pure functions follow their inputs' device.

Cross-device bugs show up without a GPU on torch's ``meta`` device: an operation that mixes a meta tensor
with a CPU tensor (other than a scalar) raises "Tensor on device cpu is not on the expected device meta",
as a CUDA tensor mixed with a CPU one does.
"""

import pytest
import torch

from mi_bridge.bridges.ridge import LAMBDA_RATIOS, Standardizer, heldout_errors, ridge_solve
from mi_bridge.config import ExperimentConfig
from mi_bridge.core.device import describe, resolve_device
from mi_bridge.core.inject import inject_residual
from mi_bridge.errors import UserError
from mi_bridge.files import sha256_tensor
from mi_bridge.protocols.seed.experiment import injected_state
from mi_bridge.sweep import actor_gpus

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, dtype=torch.float64, device="meta")


def test_the_default_device_is_auto_and_resolves_as_transformer_lens_does():
    from transformer_lens.utilities.devices import get_device

    assert ExperimentConfig().device == "auto"
    assert resolve_device("auto") == get_device()
    assert resolve_device("cpu") == "cpu"


@NO_CUDA
def test_auto_is_the_cpu_here_and_cuda_is_bad_input():
    assert resolve_device("auto") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match="not available"):
            resolve_device(name)


@NO_CUDA
def test_float16_is_refused_where_auto_means_the_cpu():
    """The config checks spellings only (no device probing); the resolved device is checked before load."""
    from mi_bridge.core.device import check_dtype

    config = ExperimentConfig(dtype="float16")  # --device auto: not known to be the CPU yet
    with pytest.raises(UserError, match="float16"):
        check_dtype(config.device, config.dtype)


def test_the_recorded_cpu_device_has_no_gpu_name():
    assert describe("cpu") == {"device": "cpu", "gpu_name": None}
    assert describe(torch.device("cpu")) == {"device": "cpu", "gpu_name": None}


@pytest.mark.parametrize(
    "work",
    [
        lambda: heldout_errors(meta(20, 4), meta(20, 3), meta(5, 4), meta(5, 3), LAMBDA_RATIOS),
        lambda: ridge_solve(meta(20, 4), meta(20, 3), 0.1),
        lambda: Standardizer(torch.zeros(4), torch.ones(4))(meta(3, 4)),
        lambda: Standardizer(torch.zeros(4), torch.ones(4)).invert(meta(3, 4)),
        lambda: inject_residual(meta(3, 5, 4), torch.tensor([1, 2, 3]), torch.randn(3, 4), "rescale-add"),
        lambda: inject_residual(meta(3, 5, 4), 2, torch.randn(4), "replace"),
        lambda: injected_state(meta(2, 5, 4), torch.randn(2, 5, 4).to("meta"), "blend", 0.3),
    ],
    ids=["heldout_errors", "ridge_solve", "standardize", "destandardize", "inject", "inject one", "seed"],
)
def test_pure_functions_compute_on_their_inputs_device(work):
    """CPU constants (lambdas, the identity, statistics, positions, vectors) follow the states' device."""
    assert work().device.type == "meta"


def test_a_tensor_on_another_device_gives_numpy_and_its_checksum():
    value = torch.arange(6, dtype=torch.bfloat16)
    assert value.float().detach().cpu().numpy().tolist() == list(range(6))
    assert sha256_tensor(value) == sha256_tensor(value.clone())


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "expected"),
    [("auto", 0.0, 0), ("auto", 2.0, 1), ("cpu", 4.0, 0), ("cuda", 1.0, 1), ("cuda:0", 8.0, 1)],
)
def test_ray_actors_take_one_gpu_where_the_run_is_on_cuda(device, cluster_gpus, expected):
    assert actor_gpus(device, cluster_gpus) == expected


def test_cuda_on_a_ray_cluster_without_gpus_is_bad_input():
    with pytest.raises(UserError, match="no GPU"):
        actor_gpus("cuda", 0.0)


def test_a_split_across_gpus_is_checked_before_any_model_loads(capsys, tmp_path):
    """What can be tested without several GPUs: the flag is validated in one line, the toy pair refuses
    it, and a single-device run records no placement (tests/test_gpu.py has no multi-GPU test: untested)."""
    from mi_bridge.config import ExperimentConfig
    from mi_bridge.core.device import check_devices
    from mi_bridge.errors import UserError
    from mi_bridge.run import main

    with pytest.raises(UserError, match="needs 2 CUDA GPUs"):
        check_devices("cpu", 2)
    check_devices("cpu", 1)
    with pytest.raises(UserError, match="toy pair"):
        ExperimentConfig(n_devices=2)
    with pytest.raises(UserError, match="at least 1"):
        ExperimentConfig(n_devices=0)
    argv = ["--pair", "pythia", "--n-devices", "2", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "needs 2 CUDA GPUs" in capsys.readouterr().err and not (tmp_path / "out").exists()
