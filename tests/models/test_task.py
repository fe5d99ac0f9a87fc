"""Prompts: right shapes and positions, seeded sampling, single-token entities in the real tokenizer."""

import pytest
import torch

from mi_bridge.errors import UserError
from mi_bridge.models.language import PYTHIA_PERSONS, PYTHIA_PLACES, TOY_INDEX, toy_language
from mi_bridge.models.task import sample_items
from tests.helpers import pythia_language


def test_toy_items_hold_the_protocol():
    items = sample_items(toy_language(), k=4, n_items=50, seed=3)
    language = items.language
    slot, final = items.slot_position, items.final_position
    assert items.sender_tokens.shape == (50, 1 + 4 * 4 + 3)
    assert items.oracle_tokens.shape == items.placeholder_tokens.shape == (50, 1 + 4 * 4 + 3)
    assert final == slot + 1  # "? <slot> lives": the slot is not the final position
    assert (items.placeholder_tokens[:, slot] == TOY_INDEX["_"]).all()
    assert (items.oracle_tokens[:, slot] == items.bridge_ids).all()
    others = [p for p in range(items.oracle_tokens.shape[1]) if p != slot]
    assert torch.equal(items.oracle_tokens[:, others], items.placeholder_tokens[:, others])
    for i in range(50):
        sender = items.describe(i)["sender"].split()
        receiver = items.describe(i)["receiver_oracle"].split()
        b, c = language.decode([int(items.bridge_ids[i])]), language.decode([int(items.answer_ids[i])])
        a = sender[-1]
        assert f"friend {a} {b} ." in " ".join(sender)  # the sender's context states A -> B
        assert f"{b} lives {c} ." in " ".join(receiver)  # the receiver's context states B -> C
        assert set(items.bridge_candidates[i].tolist()) == {TOY_INDEX[w] for w in sender[3:-3:4]}
        assert int(items.bridge_candidates[i, items.gold_index[i]]) == int(items.bridge_ids[i])


def test_sampling_is_seeded():
    a = sample_items(toy_language(), k=3, n_items=20, seed=7)
    b = sample_items(toy_language(), k=3, n_items=20, seed=7)
    c = sample_items(toy_language(), k=3, n_items=20, seed=8)
    assert torch.equal(a.sender_tokens, b.sender_tokens) and torch.equal(a.oracle_tokens, b.oracle_tokens)
    assert not torch.equal(a.sender_tokens, c.sender_tokens)


def test_relay_writes_the_given_tokens_into_the_slot():
    items = sample_items(toy_language(), k=2, n_items=10, seed=0)
    relay = items.with_slot(items.bridge_ids)
    assert torch.equal(relay, items.oracle_tokens)


@pytest.mark.parametrize("k", [1, 25])
def test_k_outside_the_pool_is_a_user_error(k):
    with pytest.raises(UserError, match="k"):
        sample_items(toy_language(), k=k, n_items=10, seed=0)


def test_every_pythia_entity_is_one_token_in_the_gpt_neox_tokenizer(neox_tokenizer):
    for entity in PYTHIA_PERSONS + PYTHIA_PLACES + (" someone",):
        ids = neox_tokenizer.encode(entity, add_special_tokens=False)
        assert len(ids) == 1, f"{entity!r} is {len(ids)} tokens"
    assert len(set(PYTHIA_PERSONS)) == len(PYTHIA_PERSONS) and len(set(PYTHIA_PLACES)) == len(PYTHIA_PLACES)


def test_pythia_prompts_tokenize_as_the_tokenizer_would_tokenize_their_text(neox_tokenizer):
    language = pythia_language(neox_tokenizer)
    items = sample_items(language, k=4, n_items=20, seed=0)
    for tokens in (items.sender_tokens, items.oracle_tokens, items.placeholder_tokens):
        for row in tokens:
            text = neox_tokenizer.decode(row[1:].tolist())
            assert neox_tokenizer.encode(text, add_special_tokens=False) == row[1:].tolist()
    sample = items.describe(0)
    assert sample["sender"].endswith("'s friend is")
    assert sample["receiver_oracle"].endswith(sample["bridge"] + " lives in")
    assert items.final_position == items.slot_position + 2  # " Bob", " lives", " in"


def test_the_list_template_ends_the_query_in_the_key(neox_tokenizer):
    """``list``: ``List: A B. ... A`` -> B and ``List: B C. ... B`` -> C. The slot is the final position, and
    the key's next token in context is the answer (what an induction head copies)."""
    from mi_bridge.models.language import english_language

    language = english_language(neox_tokenizer, "list")
    assert language.name == "english-list" and language.preamble == ("List:",)
    items = sample_items(language, k=4, n_items=30, seed=2)
    assert items.slot_position == items.final_position
    for tokens, _candidates, answer in (
        (items.sender_tokens, items.bridge_candidates, items.bridge_ids),
        (items.oracle_tokens, items.answer_candidates, items.answer_ids),
    ):
        for i in range(30):
            row = tokens[i].tolist()
            query = row[-1]
            follows = [row[p + 1] for p in range(1, len(row) - 1) if row[p] == query]
            assert follows == [int(answer[i])], language.decode(row)
    assert language.decode(items.oracle_tokens[0].tolist()).startswith("<|endoftext|>List:")


def test_the_original_template_is_unchanged(neox_tokenizer):
    """``lives-in`` keeps its name, its prompts and so its cached activations' keys."""
    from mi_bridge.models.language import english_language

    a, b = english_language(neox_tokenizer, "lives-in"), pythia_language(neox_tokenizer)
    assert a.name == b.name == "pythia" and a.preamble == ()
    assert torch.equal(
        sample_items(a, k=4, n_items=5, seed=0).oracle_tokens,
        sample_items(b, k=4, n_items=5, seed=0).oracle_tokens,
    )
    text = b.decode(sample_items(b, k=2, n_items=4, seed=0).oracle_tokens[0].tolist())
    assert text.endswith(" lives in") and "'s friend" not in text


def test_entities_are_chosen_per_tokenizer():
    from mi_bridge.models.language import single_tokens

    encode = lambda text: [0] if text in (" Alice", " Paris") else [0, 1]
    assert single_tokens((" Alice", " Bob", " Paris"), encode) == (" Alice", " Paris")


def test_a_template_is_checked_against_the_pair():
    from mi_bridge.config import ExperimentConfig

    with pytest.raises(UserError, match="template 'list' for pair toy"):
        ExperimentConfig(template="list")
    with pytest.raises(UserError, match="unknown template 'nope'"):
        ExperimentConfig(pair="pythia", template="nope")
    assert ExperimentConfig(pair="pythia").template == "list"
    assert ExperimentConfig().template == "toy"
    assert ExperimentConfig(pair="smollm2").sender_name == "smollm2-135m"


class WordTokenizer:
    """A tokenizer of whole words (leading space kept), ids offset per instance: two vocabularies that
    share every word under other ids, one of which splits ``split`` into two tokens."""

    bos_token_id = 0

    def __init__(self, offset: int, split: str = ""):
        self.offset, self.split, self.words = offset, split, {}

    def encode(self, text, add_special_tokens=False):
        import re

        pieces = re.findall(r" ?[^ ]+", text)
        if text == self.split:
            pieces = [text[:2], text[2:]]
        return [self.words.setdefault(p, self.offset + len(self.words)) for p in pieces]

    def decode(self, ids):
        inverse = {i: w for w, i in self.words.items()}
        return "".join(inverse.get(i, "<bos>") for i in ids)

    def get_vocab(self):
        return dict(self.words)


def test_two_tokenizers_share_one_entity_set_and_the_relay_is_re_encoded():
    from mi_bridge.models.language import english_language, relay_tokens
    from mi_bridge.models.task import sample_items

    sender_tok, receiver_tok = WordTokenizer(1000, split=" Paris"), WordTokenizer(5000)
    sender = english_language(sender_tok, "list", also=receiver_tok)
    receiver = english_language(receiver_tok, "list", also=sender_tok)
    assert sender.persons == receiver.persons and " Paris" not in receiver.places  # one token in both only
    assert sender.name == receiver.name != english_language(receiver_tok, "list").name  # cache keys differ
    a, b = (sample_items(language, k=3, n_items=5, seed=7) for language in (sender, receiver))
    assert [sender.decode(t.tolist()) for t in a.sender_tokens] == [
        receiver.decode(t.tolist()) for t in b.sender_tokens
    ]  # the same items, in other token ids
    assert not torch.equal(a.sender_tokens, b.sender_tokens)
    relayed = relay_tokens(a.bridge_ids, sender, receiver)
    assert torch.equal(relayed, b.bridge_ids)
    foreign = torch.tensor([sender_tok.encode(" zzz")[0]])  # a word the receiver splits is no entity
    receiver_tok.split = " zzz"
    assert relay_tokens(foreign, sender, receiver).item() == receiver.token_id(receiver.placeholder)
