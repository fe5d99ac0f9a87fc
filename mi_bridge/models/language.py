"""The language side of a pair: how the two-hop task is written (toy words, English templates) and
tokenized, with entities chosen per tokenizer (the items themselves are ``mi_bridge.models.task``).

Hop 1 (sender) reads k facts ``A's friend is B.`` and the query ``A's friend is`` -> B.
Hop 2 (receiver) reads k facts ``B lives in C.`` and the query ``<slot> lives in`` -> C.
(That is the ``lives-in`` template; pretrained pairs default to ``list``: ``List: A B. ... A`` -> B and
``List: B C. ... <slot>`` -> C, see ``TEMPLATES``.)
Every entity is one token, every template has a fixed token length, so all items of one
(language, k) have the same length and batch without padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mi_bridge.errors import UserError

# A template is a sequence of pieces; these names are filled with entities, the rest is literal text.
ENTITY_FIELDS = ("A", "B", "C", "SLOT")


@dataclass(frozen=True)
class Language:
    """How prompts of one model pair are written and tokenized."""

    name: str
    bos_id: int | None
    """None only in the language the input checks build before a model is loaded: it writes no prompt."""
    encode: Callable[[str], list[int]]
    """Literal text -> token ids (no special tokens)."""
    decode: Callable[[Sequence[int]], str]
    persons: tuple[str, ...]
    """Entities for A and B (each one token, with its leading space where the tokenizer needs it)."""
    places: tuple[str, ...]
    """Entities for C."""
    placeholder: str
    """Neutral filler for the receiver's slot in the baseline condition."""
    sender_fact: tuple[str, ...]
    sender_query: tuple[str, ...]
    receiver_fact: tuple[str, ...]
    receiver_query: tuple[str, ...]
    preamble: tuple[str, ...] = ()
    """Literal text after BOS, before the facts, in both hops' prompts."""

    def token_id(self, entity: str) -> int:
        ids = self.encode(entity)
        if len(ids) != 1:
            raise UserError(f"entity {entity!r} is {len(ids)} tokens in language {self.name!r}; must be 1")
        return ids[0]

    def texts(self) -> list[str]:
        """Every text the prompts are built from: entities, the placeholder, the templates' pieces."""
        templates = (
            self.sender_fact,
            self.sender_query,
            self.receiver_fact,
            self.receiver_query,
            self.preamble,
        )
        pieces = [piece for template in templates for piece in template if piece not in ENTITY_FIELDS]
        return [*self.persons, *self.places, self.placeholder, *pieces]

    def max_k(self) -> int:
        """Largest k for which an item can draw 2k distinct persons and k distinct places."""
        return min(len(self.persons) // 2, len(self.places))

    def render(self, template: Sequence[str], fields: dict[str, int]) -> list[int]:
        out: list[int] = []
        for piece in template:
            out.extend([fields[piece]] if piece in ENTITY_FIELDS else self.encode(piece))
        return out


# ---------------------------------------------------------------------------------------------------------
# The toy language: a closed vocabulary of words, one token each, shared by both toy models.

TOY_PERSONS = tuple(f"p{i}" for i in range(48))
TOY_PLACES = tuple(f"c{i}" for i in range(32))
TOY_WORDS = ("<bos>", "friend", "lives", ".", "?", "_") + TOY_PERSONS + TOY_PLACES
TOY_INDEX = {word: i for i, word in enumerate(TOY_WORDS)}


def _toy_encode(text: str) -> list[int]:
    try:
        return [TOY_INDEX[word] for word in text.split()]
    except KeyError as err:
        raise UserError(f"word {err.args[0]!r} is not in the toy vocabulary") from None


def toy_language() -> Language:
    # Key right before value in both hops: small models learn this lookup fast (see docs/DESIGN.md).
    return Language(
        name="toy",
        bos_id=TOY_INDEX["<bos>"],
        encode=_toy_encode,
        decode=lambda ids: " ".join(TOY_WORDS[i] for i in ids),
        persons=TOY_PERSONS,
        places=TOY_PLACES,
        placeholder="_",
        sender_fact=("friend", "A", "B", "."),
        sender_query=("?", "friend", "A"),
        receiver_fact=("B", "lives", "C", "."),
        receiver_query=("?", "SLOT", "lives"),
    )


# ---------------------------------------------------------------------------------------------------------
# Natural English for Pythia (GPT-NeoX tokenizer). Entities carry their leading space: " Bob" is one token.

PYTHIA_PERSONS = tuple(
    " " + name
    for name in (
        "Alice Bob Carol David Emma Frank Grace Henry Jack Kate Laura Mark Nancy Oscar Paul Rachel Sam Tom "
        "Anna Peter Mary John James Sarah Mike Lisa Kevin Linda Steve Susan Brian Karen Eric Amy Ryan Emily "
        "Adam Helen Chris Jane George Julia Daniel Maria Simon Ruth Victor Diana Martin Rose"
    ).split()
)
PYTHIA_PLACES = tuple(
    " " + city
    for city in (
        "Paris London Rome Berlin Tokyo Madrid Moscow Sydney Chicago Boston Dublin Vienna Cairo Delhi Seoul "
        "Oslo Athens Prague Lisbon Toronto Dallas Denver Miami Seattle Houston Atlanta Phoenix Warsaw Munich "
        "Milan Beijing Istanbul Bangkok Geneva Brussels Amsterdam Stockholm Helsinki Montreal Vancouver "
        "Manila Singapore Mumbai"
    ).split()
)


@dataclass(frozen=True)
class Template:
    """How the facts and queries of both hops are written (entity fields: A, B, C, SLOT)."""

    sender_fact: tuple[str, ...]
    sender_query: tuple[str, ...]
    receiver_fact: tuple[str, ...]
    receiver_query: tuple[str, ...]
    preamble: tuple[str, ...] = ()


TEMPLATES = {
    # The original English form, as in the seed paper's prompts. Its query ends in " lives in", a token
    # pair that follows every name in context, so an induction head has nothing to match on: a real
    # 135M model (SmolLM2-135M-Instruct) is near chance on it (docs/real_model/README.md).
    "lives-in": Template(
        sender_fact=("A", "'s friend is", "B", "."),
        sender_query=("A", "'s friend is"),
        receiver_fact=("B", " lives in", "C", "."),
        receiver_query=("SLOT", " lives in"),
    ),
    # A key-value list whose query ends in the key: the answer is the token that followed the key, which
    # an induction head copies. The form the toy pair uses; SmolLM2 is well above chance on it.
    "list": Template(
        preamble=("List:",),
        sender_fact=("A", "B", "."),
        sender_query=("A",),
        receiver_fact=("B", "C", "."),
        receiver_query=("SLOT",),
    ),
}
"""Prompt forms for natural-language tokenizers (``--template``); ``calibrate`` measures each on a pair."""
DEFAULT_TEMPLATE = "list"
"""The default for pretrained pairs: the form a real small model can do (docs/real_model/README.md)."""


def single_tokens(candidates: Sequence[str], encode: Callable[[str], list[int]]) -> tuple[str, ...]:
    """The candidates that are one token under ``encode``: a pair's entity set is chosen per tokenizer."""
    return tuple(c for c in candidates if len(encode(c)) == 1)


def english_language(tokenizer, template: str = DEFAULT_TEMPLATE, also=None) -> Language:
    """English prompts of ``template`` for any tokenizer with the Hugging Face ``encode``/``decode``
    interface; persons and places are the candidates that are single tokens in it, and in ``also`` (the
    other model's tokenizer, for a pair with two tokenizers: both languages then hold the same entities
    in the same order, so one seed draws the same items in both)."""
    if template not in TEMPLATES:
        raise UserError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    persons, places = single_tokens(PYTHIA_PERSONS, encode), single_tokens(PYTHIA_PLACES, encode)
    # The original form keeps its old name, so that its cached activations keep their keys.
    name = "pythia" if template == "lives-in" else f"english-{template}"
    if also is not None:
        other = lambda text: list(also.encode(text, add_special_tokens=False))
        persons, places = single_tokens(persons, other), single_tokens(places, other)
        # The entity set now depends on both tokenizers: it is part of the name, so of the cache key.
        name += "-shared-" + hashlib.sha256(repr((persons, places)).encode()).hexdigest()[:8]
    return Language(
        name=name,
        bos_id=tokenizer.bos_token_id,
        encode=encode,
        decode=lambda ids: tokenizer.decode(list(ids)),
        persons=persons,
        places=places,
        placeholder=" someone",
        **vars(TEMPLATES[template]),
    )


def relay_tokens(ids: Int[Tensor, " n"], sender: Language, receiver: Language) -> Int[Tensor, " n"]:
    """The text relay across tokenizers: each sender token decoded to text and encoded again by the
    receiver (as C2C's aligner does). A text that is not one receiver token cannot fill the one-token
    slot: it becomes the receiver's placeholder, an answer that carries nothing."""
    placeholder = receiver.token_id(receiver.placeholder)
    out = []
    for token in ids.tolist():
        encoded = receiver.encode(sender.decode([token]))
        out.append(encoded[0] if len(encoded) == 1 else placeholder)
    return torch.tensor(out, dtype=ids.dtype)


# ---------------------------------------------------------------------------------------------------------
# Items
