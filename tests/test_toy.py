"""The embedded toy pair: each model masters its own hop; the baseline is near chance."""

import subprocess
import sys

import pytest
import torch

from mi_bridge.capture import capture_resid_post
from mi_bridge.evaluate import score
from mi_bridge.task import sample_items, toy_language
from mi_bridge.toy import TOY_MODELS, load_toy_model, training_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_pair():
    return load_toy_model("toy-sender"), load_toy_model("toy-receiver")


def accuracy(model, tokens, candidates, gold):
    logits = capture_resid_post(
        model, tokens, layers=[0], positions=[-1], with_answer_logits=True
    ).answer_logits
    return float(score(logits, candidates, gold).correct.mean())


def test_each_toy_model_masters_its_own_hop(toy_pair):
    sender, receiver = toy_pair
    items = sample_items(toy_language(), k=4, n_items=400, seed=123)
    hop1 = accuracy(sender, items.sender_tokens, items.bridge_candidates, items.gold_index)
    oracle = accuracy(receiver, items.oracle_tokens, items.answer_candidates, items.gold_index)
    baseline = accuracy(receiver, items.placeholder_tokens, items.answer_candidates, items.gold_index)
    assert hop1 >= 0.95
    assert oracle >= 0.95
    assert 0.1 <= baseline <= 0.45  # chance is 1/k = 0.25


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


def test_training_is_bit_reproducible_across_processes():
    script = (
        "import hashlib, dataclasses; from transformer_lens import HookedTransformer\n"
        "from mi_bridge.toy import TOY_MODELS, train_toy_model\n"
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
