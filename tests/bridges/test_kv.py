"""The KV bridge family (``bridges.kv``, ``kv_fuser``, ``kv_training``): the layer map; a planted linear map
per layer is recovered from the sender layer the map names, padded positions ignored; bridges save and
load as themselves; the fuser starts at the closed-form map, a closed gate is the receiver alone, and
training through the frozen receiver lowers the answer loss, reproducibly for a seed, for the fuser and
its learned-prefix control alike (run under TransformerLens 3 and 4)."""

import json

import pytest
import torch

from mi_bridge.bridges.base import load_bridge
from mi_bridge.bridges.kv import KVLinearBridge, LayerMap, paired_caches, require_same_tokenizer
from mi_bridge.bridges.kv_fuser import KVFuser, LearnedPrefix
from mi_bridge.bridges.kv_options import KVOptions
from mi_bridge.bridges.kv_training import (
    KVItems,
    aligned,
    answer_logits,
    evaluate_source,
    loss_of,
    train_kv_source,
)
from mi_bridge.core.generate import left_pad
from mi_bridge.errors import UserError
from mi_bridge.models.language import TOY_WORDS
from mi_bridge.runtime.kv_entries import capture_kv
from tests.models.test_kv_delivery import tiny_gqa


@pytest.mark.parametrize(
    "spec, n_sender, n_receiver, expected",
    [
        ("last-aligned", 5, 3, (2, 3, 4)),
        ("last-aligned", 3, 5, (0, 0, 0, 1, 2)),  # a deeper receiver: clamped at the sender's first layer
        ("last-aligned", 3, 3, (0, 1, 2)),
        ("identity", 3, 5, (0, 1, 2, 2, 2)),
        ("shift:1", 4, 4, (1, 2, 3, 3)),
        ("shift:-2", 4, 3, (0, 0, 0)),
    ],
)
def test_the_layer_map(spec, n_sender, n_receiver, expected):
    layer_map = LayerMap.parse(spec)
    assert layer_map.sender_layers(n_sender, n_receiver) == expected
    assert LayerMap.parse(str(layer_map)) == layer_map


@pytest.mark.parametrize("spec", ["last", "shift:", "shift:x", "identity:1"])
def test_an_unknown_layer_map_is_one_line(spec):
    with pytest.raises(UserError, match="unknown layer map"):
        LayerMap.parse(spec)


def planted_caches(n_sender=4, n_receiver=3, heads_s=(3, 4), heads_r=(2, 5), seed=0):
    """Caches where receiver layer j's keys and values are an exact affine map of sender layer j + 1's
    (last-aligned), with garbage at left-padded positions."""
    g = torch.Generator().manual_seed(seed)
    batch, pos = 40, 12
    d_s, d_r = heads_s[0] * heads_s[1], heads_r[0] * heads_r[1]
    sender = [
        tuple(torch.randn(batch, pos, *heads_s, generator=g) * 2 + 1 for _ in "kv") for _ in range(n_sender)
    ]
    maps = [
        [(torch.randn(d_s, d_r, generator=g), torch.randn(d_r, generator=g) * 3) for _ in "kv"]
        for _ in range(n_receiver)
    ]
    mask = torch.ones(batch, pos, dtype=torch.long)
    mask[: batch // 2, : pos // 3] = 0
    receiver = []
    for j, pair in enumerate(maps):
        mapped = []
        for which, (weight, bias) in enumerate(pair):
            y = (sender[j + n_sender - n_receiver][which].flatten(-2) @ weight + bias).unflatten(-1, heads_r)
            mapped.append(torch.where(mask[..., None, None].bool(), y, torch.full_like(y, 1e4)))
        receiver.append(tuple(mapped))
    return sender, receiver, mask, maps


def test_a_planted_linear_map_per_layer_is_recovered_from_the_mapped_sender_layer():
    sender, receiver, mask, maps = planted_caches()
    bridge = KVLinearBridge.fit(sender, receiver, mask)
    assert bridge.sender_layers == (1, 2, 3)
    for j, (key_map, value_map) in enumerate(zip(bridge.keys, bridge.values, strict=True)):
        for fitted, (weight, bias) in ((key_map, maps[j][0]), (value_map, maps[j][1])):
            zero = fitted(torch.zeros(1, weight.shape[0]))
            torch.testing.assert_close(fitted(torch.eye(weight.shape[0])) - zero, weight, rtol=0, atol=1e-3)
            torch.testing.assert_close(zero[0], bias, rtol=0, atol=1e-3)
    mapped = bridge(sender)
    real = mask.bool()
    for (k, v), (k_true, v_true) in zip(mapped, receiver, strict=True):
        assert k.shape == k_true.shape == (40, 12, 2, 5)
        torch.testing.assert_close(k[real], k_true[real], rtol=0, atol=1e-3)
        torch.testing.assert_close(v[real], v_true[real], rtol=0, atol=1e-3)


def test_fit_and_score_holds_out_the_last_texts():
    sender, receiver, mask, _ = planted_caches()
    bridge, scores = KVLinearBridge.fit_and_score(sender, receiver, mask, n_heldout=8)
    assert scores["keys"]["r2"] > 0.999 and scores["values"]["r2"] > 0.999
    wrong, _ = KVLinearBridge.fit_and_score(
        sender, receiver, mask, n_heldout=8, layer_map=LayerMap("identity")
    )
    assert wrong.score(sender, receiver, mask)["keys"]["r2"] < 0.5  # the wrong sender layer explains nothing


def test_the_linear_bridge_saves_and_loads_as_itself(tmp_path):
    sender, receiver, mask, _ = planted_caches()
    bridge = KVLinearBridge.fit(
        sender, receiver, mask, layer_map=LayerMap.parse("shift:1"), metadata={"sender": "s"}
    )
    bridge.save(tmp_path)
    loaded = KVLinearBridge.load(tmp_path, expect={"sender": "s"})
    assert loaded.layer_map == bridge.layer_map and loaded.sender_layers == bridge.sender_layers
    assert isinstance(load_bridge(tmp_path), KVLinearBridge)  # the registry reads every kind back
    # The fitted weight is a transposed view, the loaded one contiguous: BLAS may take another kernel for
    # each (it does on some CPUs), so they agree to float32 rounding, not bit for bit.
    for (k, v), (k2, v2) in zip(loaded(sender), bridge(sender), strict=True):
        torch.testing.assert_close(k, k2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="fitted for sender='s', not 'x'"):
        KVLinearBridge.load(tmp_path, expect={"sender": "x"})
    with pytest.raises(UserError, match="not a kv-fuser bridge"):
        KVFuser.load(tmp_path)
    meta = json.loads((tmp_path / "bridge.json").read_text())
    (tmp_path / "bridge.json").write_text(json.dumps(meta | {"d_receiver": 11}))
    with pytest.raises(UserError, match="not of shape"):
        KVLinearBridge.load(tmp_path)
    path = tmp_path / "bridge.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="checksum"):
        KVLinearBridge.load(tmp_path)


def test_a_pair_with_different_tokenizers_is_refused_in_one_line(tiny_model, monkeypatch):
    sender, receiver = tiny_model, tiny_gqa()
    require_same_tokenizer(sender, receiver)  # no tokenizers: the toy pair's shared word list
    monkeypatch.setattr(receiver.cfg, "d_vocab", 87)
    with pytest.raises(UserError, match="same tokenizer"):
        require_same_tokenizer(sender, receiver)
    with pytest.raises(UserError, match="same tokenizer"):
        paired_caches(sender, receiver, torch.ones(1, 2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# The trained sources, sender Pythia-like (3 layers, 4 heads) to receiver Llama-like (2 layers, 2 KV heads)


def toy_items(n, seed):
    """Answer = the first token of the sender's prompt P; the receiver's prompt Q carries no hint of it."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randint(
        1, len(TOY_WORDS), (int(torch.randint(2, 6, (1,), generator=g)),), generator=g
    )
    prompts, tails = [draw().tolist() for _ in range(n)], [draw().tolist() for _ in range(n)]
    (p, p_mask), (q, q_mask) = left_pad(prompts), left_pad(tails)
    answers = torch.tensor([prompt[0] for prompt in prompts])
    # four candidates per item, the answer among them at a random place
    others = torch.randint(1, len(TOY_WORDS), (n, 3), generator=g)
    candidates = torch.cat([answers[:, None], others], dim=1)
    candidates = candidates.gather(1, torch.argsort(torch.rand(n, 4, generator=g), dim=1))
    return KVItems(p, p_mask.long(), q, q_mask.long(), answers, candidates)


@pytest.fixture
def pair(tiny_model):
    sender, receiver = tiny_model, tiny_gqa(seed=1)
    text = toy_items(64, seed=9)
    bridge = KVLinearBridge.fit(
        *paired_caches(sender, receiver, text.sender_tokens, text.sender_mask), text.sender_mask
    )
    return sender, receiver, bridge


def receiver_alone(receiver, items):
    rows = [q[m.bool()].tolist() for q, m in zip(items.receiver_tokens, items.receiver_mask, strict=True)]
    with torch.no_grad():
        return torch.stack([receiver(torch.tensor([row]))[0, -1] for row in rows])


def sources(pair):
    sender, receiver, bridge = pair
    fuser = KVFuser.from_bridge(bridge, rank=4, seed=3)
    return {"fuser": fuser, "prefix": LearnedPrefix.matched_to(fuser, bridge, n_positions=5, seed=3)}


def test_the_fuser_starts_at_the_closed_form_map(pair):
    sender, _, bridge = pair
    items = toy_items(6, seed=1)
    with torch.no_grad():
        kv = capture_kv(sender, items.sender_tokens, items.sender_mask)
        fused, mask = KVFuser.from_bridge(bridge, rank=4)(kv, items.sender_mask, 6)
    assert mask is items.sender_mask
    for (k, v), (k2, v2) in zip(fused, bridge(kv), strict=True):
        torch.testing.assert_close(k, k2, rtol=0, atol=1e-5)
        torch.testing.assert_close(v, v2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["fuser", "prefix"])
def test_a_closed_gate_is_the_receiver_alone(pair, kind):
    sender, receiver, _ = pair
    source, items = sources(pair)[kind], toy_items(5, seed=2)
    with torch.no_grad():
        source.gate_logits.fill_(float("-inf"))
        logits = answer_logits(source, receiver, items, sender)
    alone = receiver_alone(receiver, items)
    torch.testing.assert_close(logits.log_softmax(-1), alone.log_softmax(-1), rtol=0, atol=1e-4)


def test_the_learned_prefix_has_the_fusers_budget_and_reads_no_sender(pair):
    _, _, bridge = pair
    fuser = KVFuser.from_bridge(bridge, rank=4)
    assert fuser.n_trainable() == 2 * 2 * (4 * (32 + 16) + 16) + 2  # layers × (keys, values) + gates
    prefix = LearnedPrefix.matched_to(fuser, bridge, n_positions=16)
    assert prefix.n_trainable() == fuser.n_trainable()
    assert LearnedPrefix.matched_to(fuser, bridge, n_positions=5).rank == 5  # more rank would add nothing
    entries, mask = prefix(None, None, 3)
    assert mask is None and len(entries) == 2 and entries[0][0].shape == (3, 16, 2, 8)
    assert not LearnedPrefix.reads_sender and KVFuser.reads_sender


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "loss"), [("fuser", "candidates"), ("prefix", "vocabulary")])
def test_training_through_the_frozen_receiver_lowers_the_loss_reproducibly(pair, kind, loss, tmp_path):
    sender, receiver, _ = pair
    fit, heldout = toy_items(48, seed=3), toy_items(16, seed=4)
    options = KVOptions(epochs=4, train_batch=16, lr=3e-2, patience=4, loss=loss)

    def train():
        source = sources(pair)[kind]
        before = evaluate_source(source, receiver, fit, sender, 16, loss)[0]
        return (
            source,
            before,
            train_kv_source(source, receiver, fit, heldout, sender=sender, options=options, seed=5),
        )

    source, before, log = train()
    assert log.loss == loss and (log.n_train, log.n_heldout) == (48, 16)
    assert log.fit_loss[-1] < before - 0.1
    # the checkpoint: the best held-out k-way accuracy, ties broken by the lower held-out loss
    judged = [(a, -v) for a, v in zip(log.heldout_accuracy, log.heldout_loss, strict=True)]
    assert judged[log.best_epoch] == max(judged)
    # the source holds the best epoch's state, not the last one's
    assert evaluate_source(source, receiver, heldout, sender, 16, loss) == pytest.approx(
        (log.heldout_loss[log.best_epoch], log.heldout_accuracy[log.best_epoch]), abs=1e-5
    )
    assert log.train_accuracy == pytest.approx(evaluate_source(source, receiver, fit, sender, 16, loss)[1])
    assert all(p.requires_grad and p.grad is None for p in receiver.parameters())  # frozen, then restored
    again, _, log_again = train()
    assert log_again == log
    for (name, t), (_, t2) in zip(source.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(t, t2), name
    source.metadata = {"sender": "tiny"}
    source.save(tmp_path)
    loaded = type(source).load(tmp_path, expect={"sender": "tiny"})
    assert type(load_bridge(tmp_path, expect={"sender": "tiny"})) is type(source)
    with torch.no_grad():
        torch.testing.assert_close(
            answer_logits(loaded, receiver, heldout, sender),
            answer_logits(source, receiver, heldout, sender),
            rtol=0,
            atol=0,
        )


def test_the_candidate_loss_is_cross_entropy_among_the_k_answers_and_the_vocabulary_loss_over_all():
    items = toy_items(5, seed=6)
    logits = torch.randn(5, len(TOY_WORDS), generator=torch.Generator().manual_seed(0))
    among = logits.gather(1, items.candidates)
    candidates, correct = loss_of(logits, items, "candidates")
    torch.testing.assert_close(candidates, torch.nn.functional.cross_entropy(among, items.gold_index))
    torch.testing.assert_close(correct, (among.argmax(1) == items.gold_index).float())
    vocabulary, same = loss_of(logits, items, "vocabulary")
    torch.testing.assert_close(vocabulary, torch.nn.functional.cross_entropy(logits, items.answers))
    assert torch.equal(same, correct)
    # moving every logit outside the candidates (the answer's "format") leaves the candidate loss alone
    shifted = logits.clone()
    outside = torch.ones_like(shifted, dtype=torch.bool).scatter(1, items.candidates, False)
    shifted[outside] -= 5.0
    torch.testing.assert_close(loss_of(shifted, items, "candidates")[0], candidates)
    assert loss_of(shifted, items, "vocabulary")[0] < vocabulary


def test_an_alignment_delivers_each_position_from_the_sender_position_it_names(pair):
    sender, _, _ = pair
    items = toy_items(4, seed=7)
    entries = capture_kv(sender, items.sender_tokens, items.sender_mask)
    reversed_positions = torch.arange(items.sender_tokens.shape[1]).flip(0).expand(4, -1).clone()
    moved = aligned(entries, reversed_positions)
    for (k, v), (k2, v2) in zip(entries, moved, strict=True):
        assert torch.equal(k.flip(1), k2) and torch.equal(v.flip(1), v2)
    assert aligned(entries, None) is entries
    assert torch.equal(
        KVItems(**{**vars(items), "sender_positions": reversed_positions}).delivered_mask,
        items.sender_mask.flip(1),
    )
