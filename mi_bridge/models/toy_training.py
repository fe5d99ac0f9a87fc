"""Training the toy pair: the training batches (both hops, every fact queried once) and the retraining
into the cache (``python -m mi_bridge.models.toy train``, the one command that trains: loading never does)."""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mi_bridge.core import progress
from mi_bridge.models.language import TOY_INDEX, TOY_PERSONS, TOY_PLACES
from mi_bridge.models.toy import (
    TOY_MODELS,
    ToyRecipe,
    build_model,
    cached_folder,
    save_atomic,
    shipped_folder,
)

if TYPE_CHECKING:  # training needs TransformerLens 3; importing this module does not
    from transformer_lens import HookedTransformer


def training_batch(
    generator: torch.Generator, batch_size: int, k: int
) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"], Bool[Tensor, " batch"]]:
    """Token sequences, a mask of positions whose next token is an answer, and which rows are hop 1.

    Each row: ``<bos>``, k facts of one hop in random order, then k queries of that hop, each
    followed by its answer. Half the rows are hop 1 (friend), half hop 2 (lives).
    """
    words = TOY_INDEX
    persons = torch.tensor([words[p] for p in TOY_PERSONS])
    places = torch.tensor([words[c] for c in TOY_PLACES])
    person_pick = torch.rand(batch_size, len(persons), generator=generator).argsort(1)[:, : 2 * k]
    place_pick = torch.rand(batch_size, len(places), generator=generator).argsort(1)[:, :k]
    keys_a, values_b = persons[person_pick[:, :k]], persons[person_pick[:, k:]]
    values_c = places[place_pick]
    fact_order = torch.rand(batch_size, k, generator=generator).argsort(1)
    query_order = torch.rand(batch_size, k, generator=generator).argsort(1)
    hop1 = torch.arange(batch_size) < batch_size // 2

    def column(value: int) -> Tensor:
        return torch.full((batch_size, k), value)

    def gather(x: Tensor, order: Tensor) -> Tensor:
        return x.gather(1, order)

    # hop 1: "friend A B ." / "? friend A B" ; hop 2: "B lives C ." / "? B lives C"
    fact_1 = torch.stack(
        [
            column(words["friend"]),
            gather(keys_a, fact_order),
            gather(values_b, fact_order),
            column(words["."]),
        ],
        -1,
    )
    query_1 = torch.stack(
        [
            column(words["?"]),
            column(words["friend"]),
            gather(keys_a, query_order),
            gather(values_b, query_order),
        ],
        -1,
    )
    fact_2 = torch.stack(
        [
            gather(values_b, fact_order),
            column(words["lives"]),
            gather(values_c, fact_order),
            column(words["."]),
        ],
        -1,
    )
    query_2 = torch.stack(
        [
            column(words["?"]),
            gather(values_b, query_order),
            column(words["lives"]),
            gather(values_c, query_order),
        ],
        -1,
    )
    facts = torch.where(hop1[:, None, None], fact_1, fact_2).reshape(batch_size, -1)
    queries = torch.where(hop1[:, None, None], query_1, query_2).reshape(batch_size, -1)
    tokens = torch.cat([torch.full((batch_size, 1), words["<bos>"]), facts, queries], 1)
    # The answer is the last token of each query: the position before it predicts it.
    answer_next = torch.zeros_like(tokens, dtype=torch.bool)
    first_query = 1 + 4 * k
    answer_next[:, first_query + 2 :: 4] = True
    return tokens, answer_next, hop1


def train_toy_model(model: HookedTransformer, recipe: ToyRecipe, description: str | None) -> list[float]:
    """Train in place, bit-reproducibly; returns the loss curve (a progress bar unless ``description``
    is None).

    Training runs on one thread: with two, a multi-threaded backward reduction (the embedding's
    index-add) sums in a varying order, and the same recipe gave different weights in every process
    (measured; torch.use_deterministic_algorithms does not cover it). One thread costs ~1.5x time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, recipe, description)
    finally:
        torch.set_num_threads(threads)


def _train(model: HookedTransformer, recipe: ToyRecipe, description: str | None) -> list[float]:
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    running = 0.0
    model.train()
    steps = range(recipe.steps)
    for step in steps if description is None else progress.track(steps, description):
        k = int(torch.randint(recipe.k_range[0], recipe.k_range[1] + 1, (1,), generator=generator))
        tokens, answer_next, hop1 = training_batch(generator, recipe.batch_size, k)
        logits = model(tokens[:, :-1])
        mask = answer_next[:, :-1]
        targets = tokens[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets) | ~mask
            own_rows = hop1 if recipe.own_hop == 1 else ~hop1
            running = 0.95 * running + 0.05 * correct[own_rows].all(-1).float().mean().item()
        # Whole-row accuracy (every query of the row right), smoothed over ~20 steps.
        if step > recipe.warmup and running >= recipe.target_accuracy:
            break
    model.eval()
    return losses


@dataclass(frozen=True)
class Retrained:
    """One toy model retrained into the cache, compared with the shipped weights."""

    name: str
    seconds: float
    steps: int
    sha256: str
    shipped_sha256: str | None
    """None when no weights ship for the current recipe."""

    @property
    def bit_identical(self) -> bool:
        return self.sha256 == self.shipped_sha256


def train_into_cache(name: str) -> Retrained:
    """Train ``name`` from its recipe in this (worker) process and save it to the cache."""
    recipe = TOY_MODELS[name]
    start = time.perf_counter()
    model = build_model(recipe)
    losses = train_toy_model(model, recipe, description=None)
    folder = cached_folder(name)
    save_atomic(model, recipe, folder)
    shipped = shipped_folder(name) / "config.json"
    return Retrained(
        name=name,
        seconds=time.perf_counter() - start,
        steps=len(losses),
        sha256=json.loads((folder / "config.json").read_text())["sha256"],
        shipped_sha256=json.loads(shipped.read_text()).get("sha256") if shipped.exists() else None,
    )


def retrain(names: tuple[str, ...] = tuple(TOY_MODELS)) -> list[Retrained]:
    """Retrain ``names`` into the cache, each in its own process at once (each single-threaded, so
    the weights are those of the recipe bit for bit)."""
    # spawn, not fork: a forked child would inherit the parent's torch thread pools and state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(names), mp_context=context) as pool:
        futures = [pool.submit(train_into_cache, name) for name in names]
        description = f"training {' and '.join(names)} ({len(names)} processes)"
        done = {}
        for future in progress.track(as_completed(futures), description, total=len(names)):
            result = future.result()
            done[result.name] = result
    return [done[name] for name in names]
