"""Loading the sender/receiver pair as hooked models: TransformerLens 3 ``HookedTransformer``s, or TransformerLens 4
``TransformerBridge``s in compatibility mode (``mi_bridge.runtime.backend``).

Every check a configuration can fail (model names, revisions, weights in the cache, layer ranges, k
against the entity pool, the tokenizers) runs first, on what is known without weights: each model's
spec from its source (``mi_bridge.models.sources``: a toy recipe, a packaged or local folder, TransformerLens'
table, a hub snapshot), with its config file and tokenizer. Only then are weights loaded, by the same
source. After loading, everything downstream addresses the models by hook name only, so a toy model and a
Pythia checkpoint go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mi_bridge.config import ExperimentConfig
from mi_bridge.core import progress
from mi_bridge.core.device import (
    check_devices,
    check_dtype,
    describe,
    model_device,
    placement,
    resolve_device,
)
from mi_bridge.errors import UserError
from mi_bridge.families import family
from mi_bridge.models.language import Language, english_language, toy_language
from mi_bridge.models.sources import ModelSpec, identity, spec_of
from mi_bridge.runtime.backend import HookedModel


@dataclass
class ModelPair:
    sender: HookedModel
    receiver: HookedModel
    sender_name: str
    receiver_name: str
    language: Language
    """The receiver's language (its tokenizer writes every receiver prompt)."""
    sender_identity: dict | None = None
    """The exact checkpoint (see ``mi_bridge.models.sources.identity``); None when it cannot be resolved."""
    receiver_identity: dict | None = None
    sender_language: Language | None = None
    """The sender's own language where the two tokenizers differ (same entities, other token ids); it is
    ``language`` itself when they share one."""

    def __post_init__(self) -> None:
        if self.sender_language is None:
            self.sender_language = self.language


@dataclass
class CheckedPair:
    """A configuration that passed every check, with what the checks learnt."""

    sender: ModelSpec
    receiver: ModelSpec
    language: Language
    sender_layer: int
    receiver_layer: int
    sender_language: Language | None = None
    """Set where the two tokenizers differ (see ``ModelPair.sender_language``)."""


def middle_layer(n_layers: int) -> int:
    """Default layer: the middle of the stack (5 of 12 for Pythia-160M, 11 of 24 for Pythia-410M)."""
    return (n_layers - 1) // 2


def default_layer(pair: str, role: str, n_layers: int, depth: float | None = None) -> int:
    """Middle layers, except the toy sender: it resolves hop 1 only in its last block (its middle-layer
    state holds no trace of B: held-out normalized cosine ~0), so its last layer is the sensible default.
    A protocol may fix a relative ``depth`` instead (the seed protocol: the paper's 67%)."""
    if depth is not None:
        return int(depth * n_layers)
    if role == "sender" and family(pair).last_sender_layer:
        return n_layers - 1
    return middle_layer(n_layers)


def choose_layer(config: ExperimentConfig, role: str, name: str, n_layers: int) -> int:
    """The configured layer of ``role`` (default: ``default_layer``); out of range is a user error."""
    value = getattr(config, f"{role}_layer")
    layer = default_layer(config.pair, role, n_layers, config.options.layer_depth) if value is None else value
    if not 0 <= layer < n_layers:
        raise UserError(f"{role} layer {layer} is out of range: {name} has layers 0..{n_layers - 1}")
    return layer


def check_pair(config: ExperimentConfig) -> CheckedPair:
    """Every check that needs the models' shapes or tokenizers, done from configs: nothing is trained,
    downloaded beyond config and tokenizer files, or loaded. Raises ``UserError`` on bad input."""
    resolve_device(config.device)  # an unavailable device is bad input too
    check_devices(config.device, config.n_devices)
    check_dtype(config.device, config.dtype)
    toy = not config.family.pretrained
    sender = spec_of(config.sender_name, config.sender_revision, toy=toy)
    receiver = spec_of(config.receiver_name, config.receiver_revision, toy=toy)
    if toy:  # the toy pair: its own language
        language, sender_language = toy_language(), None
    else:
        for spec in (sender, receiver):
            if max(spec.tokenizer.get_vocab().values()) >= spec.d_vocab:
                raise UserError(
                    f"the tokenizer of {spec.name} has token ids beyond its vocabulary ({spec.d_vocab})"
                )
        languages = pair_languages(sender.tokenizer, receiver.tokenizer, config)
        language, sender_language = languages
    for entity in (*language.persons, *language.places, language.placeholder):
        language.token_id(entity)  # every entity must be one token
    if config.k > language.max_k():
        raise UserError(f"k={config.k} is larger than the entity pool allows (max k={language.max_k()})")
    return CheckedPair(
        sender,
        receiver,
        language,
        choose_layer(config, "sender", sender.name, sender.n_layers),
        choose_layer(config, "receiver", receiver.name, receiver.n_layers),
        sender_language,
    )


def pair_languages(
    sender_tokenizer, receiver_tokenizer, config: ExperimentConfig
) -> tuple[Language, Language | None]:
    """The receiver's language, and the sender's where the tokenizers differ (None where they are one).
    Two tokenizers: the entities must be single tokens in both, and what needs equal token ids is
    refused in one line (the seed protocol's every-position replacement, states paired by token)."""
    if sender_tokenizer.get_vocab() == receiver_tokenizer.get_vocab():
        return english_language(receiver_tokenizer, config.template), None
    if (reason := config.options.one_tokenizer_reason(config)) is not None:
        raise UserError(f"the two models tokenize differently: {reason}")
    return (
        english_language(receiver_tokenizer, config.template, also=sender_tokenizer),
        english_language(sender_tokenizer, config.template, also=receiver_tokenizer),
    )


def load_model(
    spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
) -> tuple[HookedModel, dict | None]:
    """The model of a checked spec, in ``dtype`` (split across ``n_devices`` GPUs), with its identity (None
    if it cannot be resolved): loaded by its source."""
    return spec.source.load(spec, device, dtype, n_devices)


def same_checkpoint(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two checked specs name the same weights (a pretrained model also by its resolved commit)."""
    return (a.name, a.repository, a.commit, a.revision, a.folder) == (
        b.name,
        b.repository,
        b.commit,
        b.revision,
        b.folder,
    )


def load_pair(config: ExperimentConfig, checked: CheckedPair | None = None) -> ModelPair:
    """Check the configuration (unless already ``checked``), then load both models."""
    checked = checked or check_pair(config)
    models, identities = {}, {}
    for role, spec in (("sender", checked.sender), ("receiver", checked.receiver)):
        if role == "receiver" and same_checkpoint(checked.sender, spec) and identities["sender"] is not None:
            # One model in two contexts: loaded once. Hooks are scoped to each forward pass, so the two
            # roles never see each other's interventions, and a second copy would only cost memory.
            models[role], identities[role] = models["sender"], dict(identities["sender"])
            continue
        models[role], identities[role] = load_model(
            spec, resolve_device(config.device), config.dtype, config.n_devices
        )
        if identities[role] is None:
            progress.warn(
                f"cannot resolve the exact checkpoint of {spec.name} in the Hugging Face cache; its "
                "activations are kept in memory only, not cached"
            )
    language, sender_language = checked.language, checked.sender_language
    if checked.receiver.source.pretrained:  # now the models' own HF tokenizers
        language, sender_language = pair_languages(
            models["sender"].tokenizer, models["receiver"].tokenizer, config
        )
        for loaded, was in ((language, checked.language), (sender_language, checked.sender_language)):
            if loaded is not None and any(loaded.encode(text) != was.encode(text) for text in loaded.texts()):
                raise RuntimeError("the tokenizers checked and loaded encode differently")
    return ModelPair(
        models["sender"],
        models["receiver"],
        config.sender_name,
        config.receiver_name,
        language,
        identities["sender"],
        identities["receiver"],
        sender_language,
    )


def resolve_layers(config: ExperimentConfig, pair: ModelPair) -> tuple[int, int]:
    """Sender and receiver layers, defaulting to the middle; out of range is a user error."""
    return (
        choose_layer(config, "sender", pair.sender_name, pair.sender.cfg.n_layers),
        choose_layer(config, "receiver", pair.receiver_name, pair.receiver.cfg.n_layers),
    )


def record_identities(config: ExperimentConfig, pair: ModelPair) -> ExperimentConfig:
    """``config`` with both models' exact checkpoints under ``extra["models"]``, so that the run folder's
    config.json names them, and the device they run on under ``extra["device"]``. A repeat (``--config``)
    that now loads another checkpoint says so."""
    recorded = config.extra.get("models")
    now = {"sender": pair.sender_identity, "receiver": pair.receiver_identity}
    for role in now if isinstance(recorded, dict) else ():
        before = recorded.get(role)
        if (
            isinstance(before, dict)
            and now[role] is not None
            and not identity.same_weights(before, now[role])
        ):
            progress.warn(
                f"the {role} was {identity.describe(before)} when this configuration was recorded and is "
                f"now {identity.describe(now[role])}: numbers will differ (--{role}-revision <commit> pins one)"
            )
    used = describe(model_device(pair.receiver))  # the device that ran (``auto`` resolved) and its GPU
    if config.n_devices > 1:  # a split model: where each one's layers went
        used |= {
            "n_devices": config.n_devices,
            "placement": {r: placement(m) for r, m in (("sender", pair.sender), ("receiver", pair.receiver))},
        }
    return replace(config, extra={**config.extra, "models": now, "device": used})
