"""The embedded toy pair: two Pythia-architecture HookedTransformers trained here on one fact language.

Both models see both hops' formats (``friend A B .`` / ``? friend A`` -> B and ``B lives C .`` /
``? B lives`` -> C); they differ in width, depth and seed. Training is deterministic on the CPU and
cached as safetensors + JSON under a folder keyed by a hash of the whole recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_bridge import progress
from mi_bridge.config import UserError
from mi_bridge.files import sha256_file, write_atomic, write_text_atomic
from mi_bridge.task import TOY_INDEX, TOY_PERSONS, TOY_PLACES, TOY_WORDS

RECIPE_VERSION = 2  # bump when the training code changes in a way the recipe fields do not capture
# (2: single-threaded training, bit-reproducible)


@dataclass(frozen=True)
class ToyRecipe:
    """Architecture and training schedule of one toy model."""

    n_layers: int
    d_model: int
    n_heads: int
    seed: int
    steps: int = 2500
    """Upper bound on optimizer steps; training stops earlier once both hops are mastered."""
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 150
    weight_decay: float = 0.01
    k_range: tuple[int, int] = (2, 6)
    """Facts per training sequence, drawn per step (test items use k inside this range)."""
    own_hop: int = 1
    """The hop this model must master (1: sender, 2: receiver); training stops once it has."""
    target_accuracy: float = 0.995
    """Early stop once the running whole-row accuracy on ``own_hop`` reaches this."""

    def model_config(self) -> HookedTransformerConfig:
        d_head = self.d_model // self.n_heads
        return HookedTransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=d_head,
            d_mlp=4 * self.d_model,
            d_vocab=len(TOY_WORDS),
            n_ctx=128,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            parallel_attn_mlp=True,
            default_prepend_bos=False,
            seed=self.seed,
        )

    def digest(self) -> str:
        blob = json.dumps(
            {"recipe": asdict(self), "words": TOY_WORDS, "version": RECIPE_VERSION}, sort_keys=True
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


TOY_MODELS = {
    "toy-sender": ToyRecipe(n_layers=3, d_model=64, n_heads=4, seed=1, own_hop=1),
    "toy-receiver": ToyRecipe(n_layers=4, d_model=96, n_heads=4, seed=2, own_hop=2),
}


def cache_root() -> Path:
    return Path(os.environ.get("MI_BRIDGE_CACHE", Path.home() / ".cache" / "mi_bridge"))


def load_toy_model(name: str, device: str = "cpu") -> HookedTransformer:
    """The trained toy model ``name``: from the cache, or trained now (a progress bar shows it)."""
    if name not in TOY_MODELS:
        raise UserError(f"unknown toy model {name!r}; choose one of {', '.join(TOY_MODELS)}")
    recipe = TOY_MODELS[name]
    folder = cache_root() / "toy" / f"{name}-{recipe.digest()}"
    model = HookedTransformer(recipe.model_config())
    problem = _load_cached(model, folder, recipe)
    if problem is None:
        return model.to(device, print_details=False).eval()
    if problem != "absent":  # a damaged cache entry is reported and retrained, never used
        progress.warn(f"cached toy model in {folder} is {problem}; retraining")
        model = HookedTransformer(recipe.model_config())
    train_toy_model(model, recipe, description=f"training {name}")
    _save_atomic(model, recipe, folder)
    return model.to(device, print_details=False).eval()


def _load_cached(model: HookedTransformer, folder: Path, recipe: ToyRecipe) -> str | None:
    """Load weights whose checksum matches the one recorded at save time; None if loaded, else why not."""
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.exists() or not config.exists():
        return "absent"
    try:
        meta = json.loads(config.read_text())
        if meta.get("digest") != recipe.digest() or meta.get("sha256") != sha256_file(weights):
            return "damaged (checksum mismatch)"
        model.load_state_dict(load_file(weights))
    except Exception as err:
        return f"unreadable ({type(err).__name__})"
    return None


def _save_atomic(model: HookedTransformer, recipe: ToyRecipe, folder: Path) -> None:
    """Weights first, then the config that vouches for them (with their checksum): a crash in between
    leaves weights without a matching config, which the loader treats as absent or damaged."""
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_atomic(folder / "model.safetensors", lambda tmp: save_file(weights, tmp))
    meta = {
        "recipe": asdict(recipe),
        "digest": recipe.digest(),
        "sha256": sha256_file(folder / "model.safetensors"),
    }
    write_text_atomic(folder / "config.json", json.dumps(meta, indent=2))


# ---------------------------------------------------------------------------------------------------------
# Training data: both hops' formats, every fact queried once (dense supervision).


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


def train_toy_model(model: HookedTransformer, recipe: ToyRecipe, description: str) -> list[float]:
    """Train in place, bit-reproducibly; returns the loss curve.

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


def _train(model: HookedTransformer, recipe: ToyRecipe, description: str) -> list[float]:
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
    for step in progress.track(range(recipe.steps), description):
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
