"""Loading the sender/receiver pair as TransformerLens ``HookedTransformer``s.

After loading, everything downstream addresses the models by hook name only, so a toy model and a
Pythia checkpoint go through the same code.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from mi_bridge.config import ExperimentConfig, UserError
from mi_bridge.task import Language, pythia_language, toy_language
from mi_bridge.toy import TOY_MODELS, load_toy_model


@dataclass
class ModelPair:
    sender: HookedTransformer
    receiver: HookedTransformer
    sender_name: str
    receiver_name: str
    language: Language


def middle_layer(n_layers: int) -> int:
    """Default layer: the middle of the stack (5 of 12 for Pythia-160M, 11 of 24 for Pythia-410M)."""
    return (n_layers - 1) // 2


SEED_LAYER_DEPTH = 0.67
"""The seed paper's relative layer (``layer_rel``): blocks 8 of 12 and 16 of 24 for Pythia-160M/410M."""


def default_layer(pair: str, role: str, n_layers: int, protocol: str = "split") -> int:
    """Middle layers, except the toy sender: it resolves hop 1 only in its last block (its middle-layer
    state holds no trace of B: held-out normalized cosine ~0), so its last layer is the sensible default.
    The seed protocol uses the paper's 67% depth."""
    if protocol == "seed":
        return int(SEED_LAYER_DEPTH * n_layers)
    if pair == "toy" and role == "sender":
        return n_layers - 1
    return middle_layer(n_layers)


def load_pretrained(name: str, device: str) -> HookedTransformer:
    """A TransformerLens pretrained model, offline from the Hugging Face cache when HF_HUB_OFFLINE=1."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise UserError(
            f"unknown model {name!r}: not a TransformerLens model name (e.g. pythia-160m)"
        ) from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TL prints a "Loaded pretrained model" line
            model = HookedTransformer.from_pretrained(official, device=device)
    except OSError:
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise UserError(
            f"weights for {official} are not in the Hugging Face cache ({cache}) and could not be downloaded: "
            f"download them once with network access (HookedTransformer.from_pretrained({name!r})) "
            "or point HF_HOME at a cache that holds them"
        ) from None
    return model.eval()


def load_model(pair: str, name: str, device: str) -> HookedTransformer:
    if pair == "toy":
        if name not in TOY_MODELS:
            raise UserError(f"unknown toy model {name!r}; choose one of {', '.join(TOY_MODELS)}")
        return load_toy_model(name, device)
    return load_pretrained(name, device)


def load_pair(config: ExperimentConfig) -> ModelPair:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {config.device!r} is not available on this machine")
    sender = load_model(config.pair, config.sender_name, config.device)
    receiver = load_model(config.pair, config.receiver_name, config.device)
    if config.pair == "toy":
        language = toy_language()
    else:
        if sender.tokenizer is None or sender.tokenizer.get_vocab() != receiver.tokenizer.get_vocab():
            raise UserError("sender and receiver must share a tokenizer (the text relay writes token ids)")
        language = pythia_language(receiver.tokenizer)
    if config.k > language.max_k():
        raise UserError(f"k={config.k} is larger than the entity pool allows (max k={language.max_k()})")
    return ModelPair(sender, receiver, config.sender_name, config.receiver_name, language)


def resolve_layers(config: ExperimentConfig, pair: ModelPair) -> tuple[int, int]:
    """Sender and receiver layers, defaulting to the middle; out of range is a user error."""
    layers = []
    for role, value, model in (
        ("sender", config.sender_layer, pair.sender),
        ("receiver", config.receiver_layer, pair.receiver),
    ):
        n_layers = model.cfg.n_layers
        layer = default_layer(config.pair, role, n_layers, config.protocol) if value is None else value
        if not 0 <= layer < n_layers:
            raise UserError(
                f"{role} layer {layer} is out of range: {getattr(pair, role + '_name')} has layers 0..{n_layers - 1}"
            )
        layers.append(layer)
    return layers[0], layers[1]
