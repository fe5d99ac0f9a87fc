"""The activation cache: capped with least-recently-used eviction, sizes reported per model checkpoint,
and nothing stored for a model whose checkpoint is unknown."""

import pytest
import torch

from mi_bridge.cache import main as cache_main
from mi_bridge.config import ExperimentConfig
from mi_bridge.core.store import ActivationStore, default_store
from mi_bridge.errors import UserError
from mi_bridge.models.language import toy_language
from mi_bridge.models.loading import ModelPair
from mi_bridge.models.sources.identity import describe
from mi_bridge.models.sources.toy import toy_identity
from mi_bridge.protocols.split.prepare import SeedContext
from tests.conftest import make_cfg, tl3_only


def never() -> torch.Tensor:
    raise AssertionError("recomputed: the cached file should have been read")


def test_the_least_recently_used_files_are_evicted_first(tmp_path):
    value = lambda: torch.randn(256, 16)
    ActivationStore(tmp_path).tensor("a", "x", value)
    one_file = (tmp_path / "a" / "x.safetensors").stat().st_size
    cap = int(2.5 * one_file)  # room for two files, not three
    first = ActivationStore(tmp_path, max_bytes=cap)
    first.tensor("b", "x", value)
    # A later process reads "a": now "b" is the least recently used, though "a" was written first.
    second = ActivationStore(tmp_path, max_bytes=cap)
    second.tensor("a", "x", never)
    second.tensor("c", "x", value)
    assert sorted(p.parent.name for p in tmp_path.glob("*/*.safetensors")) == ["a", "c"]
    assert not (tmp_path / "b").exists()
    assert sum(p.stat().st_size for p in tmp_path.glob("*/*.safetensors")) <= cap
    ActivationStore(tmp_path, max_bytes=0).tensor("d", "x", value)
    assert list(tmp_path.glob("*/*.safetensors")) == []  # a zero cap keeps nothing on disk


def test_the_cap_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path))
    monkeypatch.delenv("MI_BRIDGE_CACHE_MAX_GB", raising=False)
    assert default_store().max_bytes == 20 * 10**9
    monkeypatch.setenv("MI_BRIDGE_CACHE_MAX_GB", "0.00005")
    assert default_store().max_bytes == 50_000
    for bad in ("-1", "lots", "nan", "inf"):
        monkeypatch.setenv("MI_BRIDGE_CACHE_MAX_GB", bad)
        with pytest.raises(UserError, match="MI_BRIDGE_CACHE_MAX_GB"):
            default_store()


@tl3_only
def test_cache_info_reports_sizes_per_checkpoint_and_stores_no_unknown_checkpoint(
    tmp_path, monkeypatch, capsys
):
    from transformer_lens import HookedTransformer

    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path))
    sender, receiver = (HookedTransformer(make_cfg(seed=seed)).eval() for seed in (1, 2))
    exact = toy_identity("tiny-sender", "0" * 16, sender, "float32")
    pair = ModelPair(sender, receiver, "tiny-sender", "tiny-receiver", toy_language(), exact, None)
    store = default_store()
    context = SeedContext(ExperimentConfig(k=2, n_items=20, seeds=1), pair, 0, store)
    context.sender_states([0, 1])
    context.receiver_states([0])  # its checkpoint is unknown: computed, kept in memory only
    folders = {p.parent for p in (tmp_path / "activations").glob("*/*.safetensors")}
    assert len(folders) == 1 and (folders.pop() / "identity.json").exists()
    assert len(store.memory) == 3
    assert cache_main(["info"]) == 0
    shown = capsys.readouterr().err
    assert f"  {describe(exact)}: 3 files" in shown  # two layers and identity.json
    assert "tiny-receiver" not in shown and "cap 20 GB" in shown
