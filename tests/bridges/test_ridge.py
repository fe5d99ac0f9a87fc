"""The ridge bridge (closed form): it recovers a planted affine map, finds nothing in noise, and its
closed-form held-out errors and λ path are exact."""

import torch

from mi_bridge.bridges.metrics import fit_quality
from mi_bridge.bridges.ridge import LinearBridge, fit_report, ridge_path


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


def test_its_registry_fit_entry_scores_on_the_last_pairs_it_did_not_fit():
    from mi_bridge.bridges.base import bridge_kind

    x, y, _, _ = planted(600)
    bridge, fit = bridge_kind("ridge").fit_and_score(x, y, n_heldout=60, seed=0)
    torch.testing.assert_close(
        bridge(x[:5]), LinearBridge.fit(x[:-60], y[:-60], seed=0)(x[:5]), rtol=0, atol=0
    )
    assert fit["normalized_cosine"] > 0.99 and fit == fit_quality(bridge(x[-60:]), y[-60:], bridge.y_norm)
