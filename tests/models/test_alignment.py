"""Token alignment by text span (``models.alignment``), the facts source's bridge between two tokenizers:
the identity under one tokenizer, the rule on a planted pair of tokenizations, and a one-line refusal of
two different texts. On the real pair (SmolLM2 <-> Gemma 3), every entity landing on its own position is
tests/models/test_gemma3.py."""

import pytest
import torch

from mi_bridge.errors import UserError
from mi_bridge.models.alignment import align_text, alignment
from mi_bridge.models.language import Language, toy_language
from mi_bridge.models.task import sample_items
from tests.helpers import pythia_language


def planted(name: str, pieces: list[str], bos: str) -> Language:
    """A tokenizer of a few pieces: id i is ``pieces[i]``, id 0 its BOS."""
    vocabulary = [bos, *pieces]
    return Language(
        name=name,
        bos_id=0,
        encode=lambda text: [vocabulary.index(text)],
        decode=lambda ids: "".join(vocabulary[i] for i in ids),
        persons=(),
        places=(),
        placeholder="",
        sender_fact=(),
        sender_query=(),
        receiver_fact=(),
        receiver_query=(),
    )


def test_under_one_tokenizer_the_alignment_is_the_identity(neox_tokenizer):
    for language in (toy_language(), pythia_language(neox_tokenizer)):
        items = sample_items(language, k=3, n_items=6, seed=0)
        facts = items.oracle_tokens[:, : items.query_start]
        expected = torch.arange(facts.shape[1]).expand(6, -1)
        assert torch.equal(alignment(facts, facts, language, language), expected)
        assert align_text(facts[0].tolist(), facts[0].tolist(), language, language) == expected[0].tolist()


def test_each_receiver_token_reads_the_sender_token_that_ends_its_text():
    receiver = planted("receiver", ["Li", "st:", " Bob", " Paris", "."], "<s>")
    sender = planted("sender", ["List", ":", " Bob", " Pa", "ris", "."], "<|bos|>")
    # receiver: <s> Li st: Bob Paris .     sender: <|bos|> List : Bob Pa ris .
    r_ids, s_ids = [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6]
    # BOS to BOS (their texts differ); "Li" ends inside "List"; "st:" ends with ":"; " Paris" ends with "ris"
    assert align_text(r_ids, s_ids, receiver, sender) == [0, 1, 2, 3, 5, 6]
    # the other way: "List" ends with "st:", ":" too; " Pa" and "ris" both end inside " Paris"
    assert align_text(s_ids, r_ids, sender, receiver) == [0, 2, 2, 3, 4, 4, 5]


def test_two_different_texts_are_refused_in_one_line():
    receiver = planted("receiver", ["Li", "st:", " Bob"], "<s>")
    sender = planted("sender", ["List", ":", " Tom"], "<b>")
    with pytest.raises(UserError, match="cannot align two tokenizers: the receiver reads 'List: Bob'"):
        align_text([0, 1, 2, 3], [0, 1, 2, 3], receiver, sender)
