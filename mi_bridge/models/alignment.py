"""Token alignment of one text across two tokenizers, by text span (as C2C's ``TokenAligner`` does:
decode, then match by the characters each token covers).

The KV channel's facts source (docs/kv_channel.md) delivers the sender's keys and values of the facts F
at the receiver's positions of F. Where the two models tokenize F differently, receiver position i reads
the sender position that ends the receiver token's text: the first sender token whose span reaches the
end of the receiver token's span, i.e. the sender position that has read all of that text. Under one
tokenizer this is the identity; an entity that is one token in both lands on its own position
(``tests/models/test_alignment.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from mi_bridge.errors import UserError
from mi_bridge.models.language import Language


def token_ends(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[int]:
    """The character offset where each token's text ends: the length of the decoded prefix through it."""
    return [len(decode(ids[: i + 1])) for i in range(len(ids))]


def align_text(
    receiver_ids: Sequence[int], sender_ids: Sequence[int], receiver: Language, sender: Language
) -> list[int]:
    """For each receiver token, the sender position whose text reaches the end of the receiver token's.
    A BOS that opens both is position 0 of both (its text differs between tokenizers); the rest must decode
    to the same text, else the one-line error says where they part."""
    start = 0
    if receiver_ids[:1] == [receiver.bos_id] and sender_ids[:1] == [sender.bos_id]:
        start = 1
    r_ids, s_ids = list(receiver_ids[start:]), list(sender_ids[start:])
    r_text, s_text = receiver.decode(r_ids), sender.decode(s_ids)
    if r_text != s_text:
        raise UserError(f"cannot align two tokenizers: the receiver reads {r_text!r}, the sender {s_text!r}")
    r_ends, s_ends = token_ends(r_ids, receiver.decode), token_ends(s_ids, sender.decode)
    positions = list(range(start))
    j = 0
    for end in r_ends:
        while s_ends[j] < end:
            j += 1
        positions.append(start + j)
    return positions


def alignment(
    receiver_tokens: Int[Tensor, "n r"],
    sender_tokens: Int[Tensor, "n s"],
    receiver: Language,
    sender: Language,
) -> Int[Tensor, "n r"]:
    """Per row, ``align_text`` of the receiver's tokens against the sender's (one text each): the sender
    position each receiver position reads (under one language, the identity)."""
    if receiver is sender:
        return torch.arange(receiver_tokens.shape[1]).expand(receiver_tokens.shape[0], -1).clone()
    pairs = zip(receiver_tokens.tolist(), sender_tokens.tolist(), strict=True)
    return torch.tensor([align_text(r, s, receiver, sender) for r, s in pairs], dtype=torch.long)
