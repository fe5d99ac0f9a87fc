"""The bridge recovers a planted affine map, finds nothing in noise, and round-trips through disk."""

import json

import pytest
import torch

from mi_bridge.bridges.ridge import LinearBridge, fit_quality, fit_report, ridge_path
from mi_bridge.config import UserError


def planted(n, d_in=24, d_out=40, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_in, d_out, generator=g)
    bias = torch.randn(d_out, generator=g) * 5  # a large shared offset, as in anisotropic residual streams
    x = torch.randn(n, d_in, generator=g) * torch.linspace(0.5, 3, d_in)
    y = x @ weight + bias + noise * torch.randn(n, d_out, generator=g)
    return x, y, weight, bias


def test_the_bridge_recovers_a_planted_affine_map():
    x, y, weight, bias = planted(3000)
    x_test, y_test, _, _ = planted(500, seed=0)
    bridge = LinearBridge.fit(x[:2500], y[:2500])
    quality = fit_quality(bridge(x[2500:]), y[2500:], bridge.y_norm)
    assert quality["r2"] > 0.999
    assert quality["normalized_cosine"] > 0.999
    assert quality["centered_cosine"] > 0.999
    # the effective affine map equals the planted one
    probe = torch.eye(24)
    effective = bridge(probe) - bridge(torch.zeros(1, 24))
    torch.testing.assert_close(effective, weight, rtol=0, atol=2e-2)
    torch.testing.assert_close(bridge(torch.zeros(1, 24))[0], bias, rtol=0, atol=2e-2)


def test_on_pure_noise_the_bridge_is_no_better_than_the_trivial_predictors():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1200, 16, generator=g), torch.randn(1200, 32, generator=g) + 4.0
    bridge = LinearBridge.fit(x[:800], y[:800])
    report = fit_report(bridge, x[:800], y[:800], x[800:], y[800:], seed=0)
    assert abs(report["bridge"]["normalized_cosine"]) < 0.1
    assert abs(report["bridge"]["normalized_cosine"] - report["shuffled_pairs"]["normalized_cosine"]) < 0.1
    assert report["bridge"]["r2"] < 0.02
    # the shared offset alone gives a high raw cosine: the reason raw cosine proves little
    assert report["receiver_mean"]["raw_cosine"] > 0.9
    assert report["bridge"]["raw_cosine"] > 0.9


def test_ridge_path_at_lambda_zero_matches_least_squares():
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.randn(200, 10, generator=g, dtype=torch.float64),
        torch.randn(200, 7, generator=g, dtype=torch.float64),
    )
    path = ridge_path(x, y, torch.tensor([0.0, 1e3], dtype=torch.float64))
    torch.testing.assert_close(path[0], torch.linalg.lstsq(x, y).solution)
    assert path[1].norm() < path[0].norm()  # more ridge, smaller weights


def test_closed_form_heldout_errors_match_explicit_predictions():
    from mi_bridge.bridges.ridge import heldout_errors

    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(300, 12, generator=g, dtype=torch.float64),
        torch.randn(300, 9, generator=g, dtype=torch.float64),
    )
    y = y + x @ torch.randn(12, 9, generator=g, dtype=torch.float64)
    lambdas = torch.tensor([1e-3, 1.0, 30.0, 1e3], dtype=torch.float64)
    explicit = (
        (torch.einsum("ni,lio->lno", x[200:], ridge_path(x[:200], y[:200], lambdas)) - y[200:]) ** 2
    ).sum((1, 2))
    torch.testing.assert_close(
        heldout_errors(x[:200], y[:200], x[200:], y[200:], lambdas), explicit, rtol=1e-4, atol=1e-3
    )


def test_save_and_load_round_trip(tmp_path):
    x, y, _, _ = planted(400)
    bridge = LinearBridge.fit(x, y, metadata={"sender": "s", "receiver": "r"})
    bridge.save(tmp_path)
    loaded = LinearBridge.load(tmp_path)
    torch.testing.assert_close(loaded(x), bridge(x), rtol=0, atol=0)
    assert loaded.metadata == {"sender": "s", "receiver": "r"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge.json", "bridge.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "bad_json", "wrong_shape"])
def test_a_damaged_bridge_file_is_refused_with_a_clear_error(tmp_path, damage):
    x, y, _, _ = planted(200)
    LinearBridge.fit(x, y).save(tmp_path)
    if damage == "truncate":
        path = tmp_path / "bridge.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "bad_json":
        (tmp_path / "bridge.json").write_text("{not json")
    else:
        meta = json.loads((tmp_path / "bridge.json").read_text())
        meta["d_receiver"] += 1
        (tmp_path / "bridge.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="bridge"):
        LinearBridge.load(tmp_path)


@pytest.mark.parametrize("kind", ["ridge", "sgd-l2"])
def test_every_bridge_kind_saves_and_loads_as_itself(tmp_path, kind):
    from mi_bridge.bridges.base import BRIDGES, Bridge, load_bridge
    from mi_bridge.bridges.sgd_l2 import SGDRecipe

    x, y = torch.randn(64, 5), torch.randn(64, 7)
    options = {"recipe": SGDRecipe(epochs=2)} if kind == "sgd-l2" else {}
    bridge = BRIDGES[kind].fit(x, y, seed=0, **options)
    bridge.metadata = {"sender": "a"}
    bridge.save(tmp_path)
    loaded = load_bridge(tmp_path, expect={"sender": "a"})
    assert type(loaded) is type(bridge) and loaded.kind == kind
    torch.testing.assert_close(loaded(x), bridge(x), rtol=0, atol=1e-6)  # saved contiguous: same map
    with pytest.raises(UserError, match="not a"):
        other = next(v for k, v in BRIDGES.items() if k != kind)
        other.load(tmp_path)
    assert isinstance(loaded, Bridge)
