"""The two-hop lookup task's items: facts, the question, the answer, and the prompts of every condition.

The toy pair is trained on these items and the split protocol tests on them; the language (words,
templates, tokenizer) is ``language``."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mi_bridge.errors import UserError
from mi_bridge.models.language import ENTITY_FIELDS, Language


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
    def query_start(self) -> int:
        """The first position of the receiver's query: every receiver prompt is its facts (BOS and
        preamble included) up to here, then the query."""
        query = self.language.render(self.language.receiver_query, {"SLOT": int(self.bridge_ids[0])})
        return self.oracle_tokens.shape[1] - len(query)

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
