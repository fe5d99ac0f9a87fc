"""The embedded toy pair: two Pythia-architecture HookedTransformers trained here on one fact language.

Both models see both hops' formats (``friend A B .`` / ``? friend A`` -> B and ``B lives C .`` /
``? B lives`` -> C); they differ in width, depth and seed. Training is bit-reproducible on the CPU, so
the trained pair is an artifact of this project: it ships as package data (``toy_models/``,
safetensors + JSON with the recipe hash and the weights' SHA-256) and loads in a second. A recipe with
no shipped folder (a developer changed it) is trained by the command below into a cache folder keyed by
its hash; loading (``sources.toy``) never trains.

    python -m mi_bridge.models.toy train   # retrain both (two processes at once), compare with the shipped pair
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mi_bridge.files import cache_root

if TYPE_CHECKING:  # TransformerLens loads when a model is built, so input checks stay fast
    from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_bridge.core import progress
from mi_bridge.errors import UserError
from mi_bridge.files import sha256_file, write_atomic, write_text_atomic
from mi_bridge.models.language import TOY_WORDS, toy_language
from mi_bridge.models.task import sample_items

N_CTX = 128
"""Context length of the toy models (their rotary tables)."""

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
        from transformer_lens import HookedTransformerConfig

        d_head = self.d_model // self.n_heads
        return HookedTransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=d_head,
            d_mlp=4 * self.d_model,
            d_vocab=len(TOY_WORDS),
            n_ctx=N_CTX,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            parallel_attn_mlp=True,
            default_prepend_bos=False,
            seed=self.seed,
            device="cpu",  # built and trained on the CPU, where training is bit-reproducible; loading moves it
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


TRAIN_COMMAND = "`python -m mi_bridge.models.toy train`"
"""The one command that trains the toy pair (into the cache); loading never trains."""
SHIPPED_ROOT = Path(__file__).resolve().parent / "toy_models"
"""The trained pair as package data, one folder per model and recipe hash."""


def folder_name(name: str) -> str:
    return f"{name}-{TOY_MODELS[name].digest()}"


def shipped_folder(name: str) -> Path:
    return SHIPPED_ROOT / folder_name(name)


def cached_folder(name: str) -> Path:
    return cache_root() / "toy" / folder_name(name)


def build_model(recipe: ToyRecipe) -> HookedTransformer:
    """An untrained model of the recipe's architecture, initialized from its seed."""
    from transformer_lens import HookedTransformer

    return HookedTransformer(recipe.model_config())


def _load_cached(model: HookedTransformer, folder: Path, recipe: ToyRecipe) -> str | None:
    """Load weights whose recipe hash and checksum match the ones recorded at save time; None if
    loaded, else why not."""
    weights, problem = read_weights(folder, recipe)
    if problem is None:
        try:
            model.load_state_dict(weights)
        except Exception as err:
            return f"unreadable ({type(err).__name__})"
    return problem


def read_weights(folder: Path, recipe: ToyRecipe) -> tuple[dict[str, Tensor], str | None]:
    """The state dict in ``folder`` if its recipe hash and checksum match the recorded ones, else why not."""
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.exists() or not config.exists():
        return {}, "absent"
    try:
        meta = json.loads(config.read_text())
        if meta.get("digest") != recipe.digest():
            return {}, f"damaged (recipe hash {meta.get('digest')!r} recorded, {recipe.digest()!r} expected)"
        if meta.get("sha256") != sha256_file(weights):
            return {}, "damaged (checksum mismatch)"
        return load_file(weights), None
    except Exception as err:
        return {}, f"unreadable ({type(err).__name__})"


def save_atomic(model: HookedTransformer, recipe: ToyRecipe, folder: Path) -> None:
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


# ---------------------------------------------------------------------------------------------------------
# Retraining: `python -m mi_bridge.models.toy train`


@torch.no_grad()
def toy_validity(
    sender: HookedTransformer, receiver: HookedTransformer, *, k: int = 4, n_items: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Accuracy (argmax over the k in-context candidates) on sampled items: each model on its own hop
    (sender hop 1 -> B; receiver hop 2 with the gold B in the slot -> C), and the receiver's baseline
    with the placeholder in the slot (chance is 1/k)."""
    items = sample_items(toy_language(), k=k, n_items=n_items, seed=seed)

    from mi_bridge.core.capture import capture_resid_post
    from mi_bridge.core.evaluate import score

    def accuracy(model: HookedTransformer, tokens: Tensor, candidates: Tensor) -> float:
        capture = capture_resid_post(model, tokens, layers=[0], positions=[-1], with_answer_logits=True)
        return float(score(capture.answer_logits, candidates, items.gold_index).correct.mean())

    return {
        "hop 1 (sender)": accuracy(sender, items.sender_tokens, items.bridge_candidates),
        "hop 2 (receiver, gold B)": accuracy(receiver, items.oracle_tokens, items.answer_candidates),
        "baseline (receiver, placeholder)": accuracy(
            receiver, items.placeholder_tokens, items.answer_candidates
        ),
    }


def _load_from(folder: Path, name: str) -> HookedTransformer:
    model = build_model(TOY_MODELS[name])
    problem = _load_cached(model, folder, TOY_MODELS[name])
    if problem is not None:
        raise UserError(f"toy model in {folder} is {problem}")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mi_bridge.models.toy",
        description="Retrain the toy pair into the cache and compare it with the shipped weights.",
    )
    parser.add_argument("command", choices=("train",))
    parser.parse_args(argv)

    def body() -> int:
        start = time.perf_counter()
        from mi_bridge.models.toy_training import retrain

        results = retrain()
        wall = time.perf_counter() - start
        for r in results:
            verdict = (
                "bit-identical to the shipped weights"
                if r.bit_identical
                else "no shipped weights for this recipe"
                if r.shipped_sha256 is None
                else "differs from the shipped weights"
            )
            progress.console.print(
                f"{r.name}: {r.steps} steps in {r.seconds:.0f} s, sha256 {r.sha256[:16]}: {verdict}",
                soft_wrap=True,
            )
        if not all(r.bit_identical for r in results):
            # Another CPU or library version may sum in another order: then compare what matters.
            retrained = toy_validity(*(_load_from(cached_folder(n), n) for n in TOY_MODELS))
            shipped = (
                toy_validity(*(_load_from(shipped_folder(n), n) for n in TOY_MODELS))
                if all(shipped_folder(n).exists() for n in TOY_MODELS)
                else {}
            )
            for what, value in retrained.items():
                reference = f" (shipped pair: {shipped[what]:.3f})" if what in shipped else ""
                progress.console.print(
                    f"{what} accuracy on 1,000 sampled items, k=4: {value:.3f}{reference}", soft_wrap=True
                )
        progress.console.print(
            f"retrained into {cache_root() / 'toy'} in {wall:.0f} s (wall)", soft_wrap=True
        )
        return 0

    from mi_bridge.core.progress import one_line_errors

    return one_line_errors(body, "the cache keeps only completely written models")


if __name__ == "__main__":
    # Run through the package module, so the worker processes find the functions by their import name.
    from mi_bridge.models.toy import main as package_main

    sys.exit(package_main())
