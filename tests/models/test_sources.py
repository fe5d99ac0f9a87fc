"""Where a model comes from: one lookup from a name to its source, in one probe order, and every source
behind one interface. No weights load here."""

import pytest

from mi_bridge.errors import UserError
from mi_bridge.models.sources import PRETRAINED, TOY, ModelSource, source_for, spec_of


def test_a_name_finds_its_source_in_probe_order(tmp_path, monkeypatch):
    """Toy family -> toy; else packaged name -> local folder -> TransformerLens' table -> hub id."""
    monkeypatch.chdir(tmp_path)
    for name in ("smollm2-135m", "my-model"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert source_for("toy-sender", toy=True) is TOY
    assert source_for("smollm2-135m").kind == "packaged"  # before a folder of the same name
    assert source_for("my-model").kind == "folder"
    assert source_for("pythia-160m").kind == source_for("EleutherAI/pythia-160m").kind == "table"
    assert source_for("acme/tiny-neox").kind == "hub"
    with pytest.raises(UserError, match=r"^unknown model 'nothing': not a TransformerLens model name"):
        source_for("nothing")


def test_a_spec_carries_its_source():
    spec = spec_of("toy-receiver", toy=True)
    assert spec.source is TOY and not spec.source.pretrained
    assert (spec.n_layers, spec.repository, spec.folder) == (4, None, None)
    with pytest.raises(UserError, match="unknown toy model"):
        spec_of("pythia-160m", toy=True)


def test_every_source_implements_the_interface():
    sources = (TOY, *PRETRAINED)
    assert all(isinstance(source, ModelSource) for source in sources)
    assert [s.kind for s in sources] == ["toy", "packaged", "folder", "table", "hub"]
