"""The SGD-L2 bridge (the seed paper's): it recovers a planted map in L2-normalized space, and its registry
fit entry early-stops and scores on the last pairs."""

import torch

from mi_bridge.bridges.metrics import unit
from mi_bridge.bridges.sgd_l2 import SGDL2Bridge, SGDRecipe


def test_the_sgd_l2_bridge_recovers_a_planted_map_in_normalized_space():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(12, 8, generator=g))  # orthonormal columns: unit x̂ maps to unit ŷ
    weight = q.T  # (8 -> 12)
    x = torch.randn(1200, 8, generator=g) * 40 + 3
    y = (unit(x) @ weight) * torch.rand(1200, 1, generator=g).add(0.5) * 70  # any positive scale per row
    bridge = SGDL2Bridge.fit(x[:1000], y[:1000], seed=0, recipe=SGDRecipe(lr=1e-2))
    predicted = bridge(x[1000:])
    cosine = torch.nn.functional.cosine_similarity(predicted, unit(y[1000:]), dim=-1)
    assert cosine.min() > 0.99
    torch.testing.assert_close(bridge.weight, weight, rtol=0, atol=0.05)
    assert bridge.bias.abs().max() < 0.05
    assert bridge.history["best_epoch"] >= 1


def test_its_registry_fit_entry_scores_on_the_last_pairs_in_normalized_space():
    from mi_bridge.bridges.base import bridge_kind
    from mi_bridge.bridges.metrics import l2_fit_quality

    g = torch.Generator().manual_seed(5)
    x, weight = torch.randn(400, 6, generator=g), torch.randn(6, 9, generator=g)
    y = unit(x) @ weight
    bridge, fit = bridge_kind("sgd-l2").fit_and_score(x, y, n_heldout=40, seed=0)
    assert isinstance(bridge, SGDL2Bridge)
    assert fit == l2_fit_quality(bridge(x[-40:]), y[-40:]) | {"best_epoch": bridge.history["best_epoch"]}
    torch.testing.assert_close(bridge.weight, SGDL2Bridge.fit(x, y, seed=0).weight, rtol=0, atol=0)
