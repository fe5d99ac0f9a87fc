"""The embedded toy pair (``mi_bridge.models.toy``: recipes, shipped weights, training): its shape from
the recipe, its own word list as tokenizer (``models.language.toy_language``), the shipped (else cached)
weights checked and loaded onto the backend. Its identity is its recipe hash, the SHA-256 of its weights
and its dtype."""

from __future__ import annotations

import torch
from torch import Tensor

from mi_bridge.errors import UserError
from mi_bridge.models import toy
from mi_bridge.models.language import TOY_WORDS
from mi_bridge.models.sources.base import ModelSource, ModelSpec
from mi_bridge.models.sources.identity import weights_sha256
from mi_bridge.runtime.backend import BACKEND, HookedModel


class ToySource(ModelSource):
    kind = "toy"
    pretrained = False

    def claims(self, name: str) -> bool:
        return name in toy.TOY_MODELS

    def spec(self, name: str, revision: str | None = None) -> ModelSpec:
        check_name(name)
        return ModelSpec(
            name=name, n_layers=toy.TOY_MODELS[name].n_layers, d_vocab=len(TOY_WORDS), source=self
        )

    def load(
        self, spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
    ) -> tuple[HookedModel, dict | None]:
        model = load_toy_model(spec.name, device)
        exact = toy_identity(spec.name, toy.TOY_MODELS[spec.name].digest(), model, dtype)
        if dtype != "float32":
            model = model.to(getattr(torch, dtype), print_details=False)
        return model, exact


def toy_identity(name: str, recipe_digest: str, model, dtype: str) -> dict:
    return {"toy": name, "recipe": recipe_digest, "weights_sha256": weights_sha256(model), "dtype": dtype}


def check_name(name: str) -> None:
    if name not in toy.TOY_MODELS:
        raise UserError(f"unknown toy model {name!r}; choose one of {', '.join(toy.TOY_MODELS)}")


def load_toy_model(name: str, device: str = "cpu") -> HookedModel:
    """The trained toy model ``name``, unprocessed: the shipped weights for the current recipe; for a recipe
    that ships none, the ones ``python -m mi_bridge.models.toy train`` cached (never trained here). Under
    TransformerLens 3 a ``HookedTransformer``; under 4 the same function as a GPT-NeoX model in a bridge
    (tests/models/test_backends.py)."""
    check_name(name)
    recipe = toy.TOY_MODELS[name]
    weights = checked_weights(name)
    try:  # the hash vouches for the recipe: a failure here is a file that checks out yet does not load
        return BACKEND.from_hooked_state_dict(
            weights,
            build=lambda: toy.build_model(recipe),
            n_heads=recipe.n_heads,
            n_ctx=toy.N_CTX,
            name=name,
            device=device,
        )
    except (RuntimeError, KeyError, ValueError) as err:
        raise UserError(
            f"the toy model {name} is unreadable ({type(err).__name__}); {retrain_hint()}"
        ) from None


def retrain_hint() -> str:
    """What to do about a damaged or missing toy model under the installed backend."""
    if BACKEND.trains_toy_pair:
        return f"retrain it with {toy.TRAIN_COMMAND}"
    return "under this TransformerLens it can be loaded, not trained (reinstall mi_bridge, or train it with TransformerLens 3)"


def checked_weights(name: str) -> dict[str, Tensor]:
    """The weights of ``name``'s current recipe, shipped or else cached, checked against their recorded
    recipe hash and checksum. A damaged shipped file is the installation's fault: said so, never retrained
    silently; a damaged cache entry is reported, never used."""
    recipe, shipped = toy.TOY_MODELS[name], toy.shipped_folder(name)
    if shipped.exists():
        weights, problem = toy.read_weights(shipped, recipe)
        if problem is not None:
            problem = "incomplete (a file is missing)" if problem == "absent" else problem
            raise UserError(
                f"the shipped toy model in {shipped} is {problem}; reinstall mi_bridge ({retrain_hint()})"
            )
        return weights
    folder = toy.cached_folder(name)
    weights, problem = toy.read_weights(folder, recipe)
    if problem == "absent":
        raise UserError(f"no weights ship for {name}'s current recipe and none are cached: {retrain_hint()}")
    if problem is not None:
        raise UserError(f"the cached toy model in {folder} is {problem}; {retrain_hint()}")
    return weights
