"""``python -m mi_bridge.cache``: reports and clears exactly the parts asked for."""

from mi_bridge.cache import main


def test_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path))
    (tmp_path / "activations" / "k").mkdir(parents=True)
    (tmp_path / "activations" / "k" / "L1-P3.safetensors").write_bytes(b"x" * 2048)
    (tmp_path / "toy" / "m").mkdir(parents=True)
    (tmp_path / "toy" / "m" / "model.safetensors").write_bytes(b"y" * 10)
    assert main(["info"]) == 0
    assert "activations: 1 files" in capsys.readouterr().err
    assert main(["clear", "--activations"]) == 0
    assert not (tmp_path / "activations").exists() and (tmp_path / "toy" / "m" / "model.safetensors").exists()
    assert main(["clear"]) == 0
    assert not (tmp_path / "toy").exists()
