"""The embedded toy pair: shipped, verified on load, retrainable bit for bit; each model masters its
own hop and the baseline is near chance."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mi_bridge.errors import UserError
from mi_bridge.models import toy
from mi_bridge.models.language import toy_language
from mi_bridge.models.sources.toy import load_toy_model
from mi_bridge.models.toy import TOY_MODELS, toy_validity
from mi_bridge.models.toy_training import training_batch
from mi_bridge.run import main as run_main
from tests.conftest import tl3_only


@pytest.fixture(scope="module")
def toy_pair():
    return load_toy_model("toy-sender"), load_toy_model("toy-receiver")


def assert_valid(validity: dict[str, float]) -> None:
    assert validity["hop 1 (sender)"] >= 0.95
    assert validity["hop 2 (receiver, gold B)"] >= 0.95
    assert 0.1 <= validity["baseline (receiver, placeholder)"] <= 0.45  # chance is 1/k = 0.25


@pytest.mark.slow
def test_each_toy_model_masters_its_own_hop(toy_pair):
    assert_valid(toy_validity(*toy_pair, n_items=400, seed=123))


@tl3_only  # TransformerLens 4 lays the state dict out as GPT-NeoX
def test_the_shipped_pair_is_what_loads_by_default(toy_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path))  # an empty cache: nothing is trained
    for name, model in zip(TOY_MODELS, toy_pair, strict=True):
        folder = toy.shipped_folder(name)
        meta = json.loads((folder / "config.json").read_text())
        assert meta["digest"] == TOY_MODELS[name].digest() == folder.name.rsplit("-", 1)[1]
        shipped = load_file(folder / "model.safetensors")
        assert shipped.keys() == model.state_dict().keys()
        assert all(torch.equal(shipped[key], value) for key, value in model.state_dict().items())
    load_toy_model("toy-sender")
    assert not (tmp_path / "toy").exists()


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A private copy of the shipped folders that the loader reads instead of the package's."""
    root = tmp_path / "toy_models"
    shutil.copytree(toy.SHIPPED_ROOT, root)
    monkeypatch.setattr(toy, "SHIPPED_ROOT", root)
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    return root


def test_a_damaged_shipped_model_is_one_line_and_exit_2(shipped_copy, tmp_path, capsys):
    weights = shipped_copy / toy.folder_name("toy-receiver") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="toy model .*(damaged|checksum mismatch)"):
        load_toy_model("toy-receiver")
    out = tmp_path / "run"
    assert run_main(["--n-items", "40", "--seeds", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "checksum" in error and "\n" not in error
    assert not out.exists() and not (tmp_path / "cache" / "toy").exists()  # nothing retrained silently


def test_a_shipped_model_of_another_recipe_hash_is_refused(shipped_copy):
    config = shipped_copy / toy.folder_name("toy-sender") / "config.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "digest": "0" * 16}))
    with pytest.raises(UserError, match="recipe hash"):
        load_toy_model("toy-sender")
    (shipped_copy / toy.folder_name("toy-sender") / "model.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete|absent"):
        load_toy_model("toy-sender")


@tl3_only
def test_a_changed_recipe_is_refused_until_the_train_command_has_cached_it(tmp_path, monkeypatch):
    """Loading never trains: a recipe without shipped weights is one line naming the command that trains
    it; once that has run (here: its function, for one tiny recipe), the cached weights load."""
    from mi_bridge.models.toy_training import train_into_cache

    changed = dataclasses.replace(TOY_MODELS["toy-sender"], steps=3, warmup=1)
    monkeypatch.setitem(TOY_MODELS, "toy-sender", changed)
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path))
    assert not toy.shipped_folder("toy-sender").exists()
    with pytest.raises(UserError, match="python -m mi_bridge.models.toy train"):
        load_toy_model("toy-sender")
    assert not (tmp_path / "toy").exists()  # nothing was trained
    trained = train_into_cache("toy-sender")
    assert trained.steps == 3 and (toy.cached_folder("toy-sender") / "config.json").exists()
    cached = load_toy_model("toy-sender")
    assert (
        json.loads((toy.cached_folder("toy-sender") / "config.json").read_text())["sha256"] == trained.sha256
    )
    assert cached.cfg.n_layers == changed.n_layers


@pytest.mark.slow
@pytest.mark.retrain
def test_retraining_reproduces_a_valid_pair_and_reports_bit_equality(tmp_path):
    """python -m mi_bridge.models.toy train: both models retrained at once into the cache. On this machine's
    CPU and libraries the weights should equal the shipped ones bit for bit; elsewhere the command
    reports hop accuracies instead, which must show a valid pair either way."""
    env = dict(os.environ, MI_BRIDGE_CACHE=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "mi_bridge.models.toy", "train"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    identical = {}
    for name in TOY_MODELS:
        retrained = json.loads((tmp_path / "toy" / toy.folder_name(name) / "config.json").read_text())
        shipped = json.loads((toy.shipped_folder(name) / "config.json").read_text())
        identical[name] = retrained["sha256"] == shipped["sha256"]
        report = next(line for line in done.stderr.splitlines() if line.startswith(name))
        assert ("bit-identical" in report) == identical[name]
    print(f"retrained weights bit-identical to the shipped ones: {identical}")
    if not all(identical.values()):
        assert "hop 1 (sender) accuracy" in done.stderr
    retrained = [toy._load_from(tmp_path / "toy" / toy.folder_name(name), name) for name in TOY_MODELS]
    assert_valid(toy_validity(*retrained, n_items=400, seed=123))


def test_the_pair_differs_in_width_depth_and_seed(toy_pair):
    sender, receiver = toy_pair
    assert sender.cfg.d_model != receiver.cfg.d_model and sender.cfg.n_layers != receiver.cfg.n_layers
    recipes = TOY_MODELS["toy-sender"], TOY_MODELS["toy-receiver"]
    assert recipes[0].seed != recipes[1].seed and recipes[0].digest() != recipes[1].digest()
    for model in toy_pair:
        assert model.cfg.positional_embedding_type == "rotary" and model.cfg.parallel_attn_mlp
        assert model.cfg.normalization_type == "LN" and model.cfg.act_fn == "gelu"


def test_training_batches_supervise_exactly_the_answers():
    tokens, answer_next, hop1 = training_batch(torch.Generator().manual_seed(0), 8, 3)
    assert tokens.shape == (8, 1 + 8 * 3) and answer_next.sum() == 8 * 3
    words = toy_language()
    for row in range(8):
        for position in answer_next[row].nonzero()[:, 0].tolist():
            query = words.decode(tokens[row, position - 2 : position + 2].tolist()).split()
            assert query[0] == "?"
            answer = query[3]
            facts = words.decode(tokens[row, 1 : 1 + 4 * 3].tolist())
            if hop1[row]:
                assert f"friend {query[2]} {answer} ." in facts
            else:
                assert f"{query[1]} lives {answer} ." in facts


@pytest.mark.slow
@tl3_only
def test_training_is_bit_reproducible_across_processes():
    script = (
        "import hashlib, dataclasses; from transformer_lens import HookedTransformer\n"
        "from mi_bridge.models.toy import TOY_MODELS\nfrom mi_bridge.models.toy_training import train_toy_model\n"
        "recipe = dataclasses.replace(TOY_MODELS['toy-receiver'], steps=30)\n"
        "model = HookedTransformer(recipe.model_config())\n"
        "train_toy_model(model, recipe, 'test')\n"
        "print(hashlib.sha256(b''.join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        for _ in range(2)
    }
    assert len(digests) == 1
