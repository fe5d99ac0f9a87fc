"""The bridge interface, whatever the kind: a saved bridge round-trips through disk as its own kind, and a
damaged or foreign file is one clear error."""

import json

import pytest
import torch

from mi_bridge.bridges.ridge import LinearBridge
from mi_bridge.errors import UserError
from tests.bridges.test_ridge import planted


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
