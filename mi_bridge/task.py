"""The two-hop protocol: languages (toy and Pythia English), item sampling, prompts as token tensors.

Hop 1 (sender) reads k facts ``A's friend is B.`` and the query ``A's friend is`` -> B.
Hop 2 (receiver) reads k facts ``B lives in C.`` and the query ``<slot> lives in`` -> C.
(That is the ``lives-in`` template; pretrained pairs default to ``list``: ``List: A B. ... A`` -> B and
``List: B C. ... <slot>`` -> C, see ``TEMPLATES``.)
Every entity is one token, every template has a fixed token length, so all items of one
(language, k) have the same length and batch without padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mi_bridge.config import UserError

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
    # 135M model (SmolLM2-135M-Instruct) is near chance on it (README: Real model).
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
"""The default for pretrained pairs: the form a real small model can do (README: Real model)."""


def single_tokens(candidates: Sequence[str], encode: Callable[[str], list[int]]) -> tuple[str, ...]:
    """The candidates that are one token under ``encode``: a pair's entity set is chosen per tokenizer."""
    return tuple(c for c in candidates if len(encode(c)) == 1)


def english_language(tokenizer, template: str = DEFAULT_TEMPLATE) -> Language:
    """English prompts of ``template`` for any tokenizer with the Hugging Face ``encode``/``decode``
    interface; persons and places are the candidates that are single tokens in it."""
    if template not in TEMPLATES:
        raise UserError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    return Language(
        # The original form keeps its old name, so that its cached activations keep their keys.
        name="pythia" if template == "lives-in" else f"english-{template}",
        bos_id=tokenizer.bos_token_id,
        encode=encode,
        decode=lambda ids: tokenizer.decode(list(ids)),
        persons=single_tokens(PYTHIA_PERSONS, encode),
        places=single_tokens(PYTHIA_PLACES, encode),
        placeholder=" someone",
        **vars(TEMPLATES[template]),
    )


def pythia_language(tokenizer) -> Language:
    """The original English form (``lives-in``), which the benchmarks and the seed-era tests time."""
    return english_language(tokenizer, "lives-in")


def load_neox_tokenizer(path: Path):
    """The GPT-NeoX tokenizer from a ``tokenizer.json`` file, as a Hugging Face fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


# ---------------------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class TaskItems:
    """n two-hop items as token tensors. Row i of every tensor is item i."""

    language: Language
    k: int
    sender_tokens: Int[Tensor, "n_items sender_pos"]
    """Sender prompt: hop-1 facts + query; its next token should be B."""
    placeholder_tokens: Int[Tensor, "n_items receiver_pos"]
    """Receiver prompt with the neutral placeholder in the slot (baseline)."""
    oracle_tokens: Int[Tensor, "n_items receiver_pos"]
    """Receiver prompt with the gold B in the slot (ceiling)."""
    bridge_ids: Int[Tensor, " n_items"]
    """Gold B."""
    bridge_candidates: Int[Tensor, "n_items k"]
    """The k in-context B's (the sender's answer candidates)."""
    answer_candidates: Int[Tensor, "n_items k"]
    """The k in-context C's (the receiver's answer candidates)."""
    gold_index: Int[Tensor, " n_items"]
    """Index of the gold answer in both candidate rows (B_j and C_j share j)."""
    counterfactual_tokens: Int[Tensor, "n_items receiver_pos"]
    """The oracle prompt with the C's cyclically permuted among the k facts (fact q gets the C of fact
    q+1, in prompt order): gold B now lives in another in-context C."""
    follow_index: Int[Tensor, " n_items"]
    """Index (in ``answer_candidates``) of the C that gold B lives in under the counterfactual prompt."""
    context_free_tokens: Int[Tensor, "n_items receiver_pos"]
    """Gold B in the slot, after the facts of another item in which B does not occur: a receiver state
    that carries B without this item's answer."""
    slot_position: int

    @property
    def n_items(self) -> int:
        return self.sender_tokens.shape[0]

    @property
    def answer_ids(self) -> Int[Tensor, " n_items"]:
        return self.answer_candidates.gather(1, self.gold_index[:, None])[:, 0]

    @property
    def final_position(self) -> int:
        return self.oracle_tokens.shape[1] - 1

    def with_slot(self, slot_ids: Int[Tensor, " n_items"]) -> Int[Tensor, "n_items receiver_pos"]:
        """Receiver prompts whose slot holds the given tokens (e.g. the sender's greedy prediction)."""
        tokens = self.placeholder_tokens.clone()
        tokens[:, self.slot_position] = slot_ids
        return tokens

    def subset(self, index: Int[Tensor, " m"]) -> TaskItems:
        fields = {
            name: getattr(self, name)[index]
            for name in (
                "sender_tokens",
                "placeholder_tokens",
                "oracle_tokens",
                "bridge_ids",
                "bridge_candidates",
                "answer_candidates",
                "gold_index",
                "counterfactual_tokens",
                "follow_index",
                "context_free_tokens",
            )
        }
        return TaskItems(language=self.language, k=self.k, slot_position=self.slot_position, **fields)

    def join(self, other: TaskItems) -> TaskItems:
        """These items followed by ``other``'s (same language, k and prompt layout)."""
        if (other.language.name, other.k, other.slot_position) != (
            self.language.name,
            self.k,
            self.slot_position,
        ):
            raise ValueError("can only join items of one language, k and prompt layout")
        tensors = {
            f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)])
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return TaskItems(language=self.language, k=self.k, slot_position=self.slot_position, **tensors)

    def describe(self, i: int) -> dict[str, str]:
        decode = self.language.decode
        return {
            "sender": decode(self.sender_tokens[i].tolist()),
            "receiver_oracle": decode(self.oracle_tokens[i].tolist()),
            "bridge": decode([int(self.bridge_ids[i])]),
            "answer": decode([int(self.answer_ids[i])]),
        }


def sample_items(language: Language, *, k: int, n_items: int, seed: int) -> TaskItems:
    """Sample n items with k facts per hop. Seeded: the same arguments give the same items."""
    if k < 2:
        raise UserError(f"k must be at least 2 (got {k})")
    if k > language.max_k():
        raise UserError(
            f"k={k} is larger than the entity pool allows for language {language.name!r} (max k={language.max_k()})"
        )
    rng = np.random.default_rng(seed)
    person_ids = np.array([language.token_id(p) for p in language.persons])
    place_ids = np.array([language.token_id(c) for c in language.places])
    placeholder_id = language.token_id(language.placeholder)

    rows: dict[str, list] = {
        name: []
        for name in ("sender", "placeholder", "oracle", "b", "b_cand", "c_cand", "j", "facts", "cf", "follow")
    }
    for _ in range(n_items):
        persons = rng.choice(person_ids, size=2 * k, replace=False).tolist()
        a_ids, b_ids = persons[:k], persons[k:]
        c_ids = rng.choice(place_ids, size=k, replace=False).tolist()
        j = int(rng.integers(k))
        preamble = [language.bos_id, *language.render(language.preamble, {})]
        sender = list(preamble)
        for i in rng.permutation(k):
            sender += language.render(language.sender_fact, {"A": a_ids[i], "B": b_ids[i]})
        sender += language.render(language.sender_query, {"A": a_ids[j]})
        order = rng.permutation(k)
        receiver, counterfactual = list(preamble), list(preamble)
        for q, i in enumerate(order):
            receiver += language.render(language.receiver_fact, {"B": b_ids[i], "C": c_ids[i]})
            shifted = order[(q + 1) % k]  # cyclic: fact q takes the C of fact q+1
            counterfactual += language.render(language.receiver_fact, {"B": b_ids[i], "C": c_ids[shifted]})
        query = language.render(language.receiver_query, {"SLOT": b_ids[j]})
        rows["placeholder"].append(
            receiver + language.render(language.receiver_query, {"SLOT": placeholder_id})
        )
        rows["oracle"].append(receiver + query)
        rows["facts"].append(receiver)
        rows["cf"].append(counterfactual + query)
        rows["follow"].append(int(order[(int(np.flatnonzero(order == j)[0]) + 1) % k]))
        rows["sender"].append(sender)
        rows["b"].append(b_ids[j])
        rows["b_cand"].append(b_ids)
        rows["c_cand"].append(c_ids)
        rows["j"].append(j)

    query_start = len(rows["oracle"][0]) - len(
        language.render(language.receiver_query, {"SLOT": placeholder_id})
    )
    slot_position = query_start + _slot_offset(language)
    context_free = [
        rows["facts"][donor] + language.render(language.receiver_query, {"SLOT": rows["b"][i]})
        for i, donor in enumerate(_donors(rows["b"], rows["b_cand"]))
    ]
    as_long = lambda values: torch.tensor(np.array(values), dtype=torch.long)
    return TaskItems(
        language=language,
        k=k,
        sender_tokens=as_long(rows["sender"]),
        placeholder_tokens=as_long(rows["placeholder"]),
        oracle_tokens=as_long(rows["oracle"]),
        bridge_ids=as_long(rows["b"]),
        bridge_candidates=as_long(rows["b_cand"]),
        answer_candidates=as_long(rows["c_cand"]),
        gold_index=as_long(rows["j"]),
        counterfactual_tokens=as_long(rows["cf"]),
        follow_index=as_long(rows["follow"]),
        context_free_tokens=as_long(context_free),
        slot_position=slot_position,
    )


def _donors(bridge_ids: list[int], bridge_candidates: list[list[int]]) -> list[int]:
    """For each item, the next item (cyclically) whose facts do not mention its B: the context of its
    context-free prompt. Deterministic, so the items' random draws stay those of every earlier version."""
    n = len(bridge_ids)
    donors = []
    for i, b in enumerate(bridge_ids):
        donor = next((m % n for m in range(i + 1, i + n) if b not in bridge_candidates[m % n]), None)
        if donor is None:
            raise UserError("cannot build context-free prompts: every item's facts mention the same B")
        donors.append(donor)
    return donors


def _slot_offset(language: Language) -> int:
    """Token offset of the slot inside the receiver query."""
    offset = 0
    for piece in language.receiver_query:
        if piece == "SLOT":
            return offset
        offset += 1 if piece in ENTITY_FIELDS else len(language.encode(piece))
    raise ValueError(f"receiver query of {language.name!r} has no SLOT")
