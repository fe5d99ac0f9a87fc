"""The seed paper's protocol as released (``--protocol seed``): both models read the same prompt; a
bridge fitted on the same text through both models translates the sender's states at every position;
the receiver generates greedily with the translated states injected during prefill at
``blocks.{Lr}.hook_resid_post``; answers are scored with the paper's three metrics.

Conditions (the published table, plus an oracle that the paper does not have):

| condition | what the receiver's state h at every prompt position becomes |
|---|---|
| no injection | h |
| text relay | h of another prompt: the sender's greedy "Key facts:" continuation, then the question |
| additive | h + 0.01 · v_last (the last position's translated vector, at every position) |
| receiver self-inject | the receiver's own h (captured in a separate pass): must equal no injection |
| best alpha (0.3) | 0.3 · v·‖h‖/‖v‖ + 0.7 · h |
| scale-corrected | v·‖h‖/‖v‖ |
| replace | v (the bridge output as it is) |
| shuffled translation | another item's v (same prompt length) · ‖h‖/‖v‖ |
| same-norm random | a Gaussian direction · ‖h‖ |
| zero replacement | 0 |
| oracle | h of the prompt with the answer-bearing fact restated (``seed_task.oracle_prompt``) |

Conditions that use a bridge or random numbers run once per seed (and per bridge with ``--bridge
both``); the others are deterministic and run once, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.config import ExperimentConfig
from mi_bridge.core import progress
from mi_bridge.core.capture import batches
from mi_bridge.core.controls import random_like, same_length_derangement
from mi_bridge.core.device import model_device
from mi_bridge.core.generate import greedy_generate, right_aligned
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.core.inject import apply_injection, rescale_to
from mi_bridge.models.loading import ModelPair
from mi_bridge.protocols.seed import audit
from mi_bridge.protocols.seed.fitting import (
    FittedBridge,
    fit_bridges,
    fit_pairs,
    item_states,
    last_token_pairs,
)
from mi_bridge.protocols.seed.metrics import METRICS, score
from mi_bridge.protocols.seed.task import (
    MAX_PROMPT_TOKENS,
    SeedItem,
    load_eval,
    load_fit_corpus,
    oracle_prompt,
    paper_seed,
    prompt,
    relay_receiver_prompt,
    relay_sender_prompt,
)
from mi_bridge.seeds import SeedOffset

DEFAULT_FIT_TEXTS = 5000
"""The paper's fit corpus size (WikiText-103 texts)."""
ADDITIVE_SCALE = 0.01
BEST_ALPHA = 0.3
PRIMARY_METRIC = "boundary_contains"
FLOORS = ("zero replacement", "same-norm random")


@dataclass(frozen=True)
class SeedCondition:
    name: str
    vector: str | None = None
    """``translated``, ``shuffled`` (both need a bridge), ``own``, ``random``, ``zero``, or None."""
    mode: str | None = None
    """``add-last``, ``add``, ``replace`` or ``blend`` (alpha · rescaled + (1 − alpha) · h)."""
    alpha: float = 1.0
    prompt: str = "full"
    """``full``, ``relay`` or ``oracle``."""

    @property
    def uses_bridge(self) -> bool:
        return self.vector in ("translated", "shuffled")

    @property
    def seeded(self) -> bool:
        return self.uses_bridge or self.vector == "random"


BASELINE = SeedCondition("no injection")
ORACLE = SeedCondition("oracle (answer fact restated)", prompt="oracle")
CONDITIONS = [
    BASELINE,
    SeedCondition("text relay", prompt="relay"),
    SeedCondition("additive", "translated", "add-last", ADDITIVE_SCALE),
    SeedCondition("receiver self-inject", "own", "replace"),
    SeedCondition("best alpha (0.3)", "translated", "blend", BEST_ALPHA),
    SeedCondition("scale-corrected", "translated", "blend"),
    SeedCondition("replace", "translated", "replace"),
    SeedCondition("shuffled translation", "shuffled", "blend"),
    SeedCondition("same-norm random", "random", "blend"),
    SeedCondition("zero replacement", "zero", "replace"),
    ORACLE,
]


def injected_state(
    h: Float[Tensor, "n pos d"], v: Float[Tensor, "n v_pos d"], mode: str, alpha: float
) -> Float[Tensor, "n pos d"]:
    """The receiver's new state at every prompt position (pure): ``core.inject.apply_injection`` at each
    position, except ``add-last``, the paper's additive condition, which adds the last position's vector
    at every position (``v`` may then hold the last position alone: across two tokenizers it does)."""
    v = v.to(h.dtype)
    if mode == "add-last":
        return apply_injection(h, v[:, -1:, :].expand_as(h), "add", alpha)
    if mode not in ("add", "replace", "blend"):
        raise ValueError(f"unknown seed injection {mode!r}")
    return apply_injection(h, v, mode, alpha)


def prefill_hook(vectors: Float[Tensor, "n pos d"], mode: str, alpha: float):
    """A TransformerLens hook replacing the residual stream by :func:`injected_state`."""

    def hook_fn(act: Float[Tensor, "n pos d"], hook) -> Float[Tensor, "n pos d"]:
        return injected_state(act, vectors.to(act.device), mode, alpha)

    return hook_fn


# ---------------------------------------------------------------------------------------------------------
# Tokens, states, fit pairs


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids as the paper's Hugging Face tokenizer gives them: no BOS, truncated at 256. The models'
    tokenizer is built with ``add_bos_token=True`` (TransformerLens' setting, for the split protocol's
    prompts), so special tokens are switched off here: Pythia's own tokenizer adds none by default."""
    return [
        tokenizer(t, truncation=True, max_length=MAX_PROMPT_TOKENS, add_special_tokens=False)["input_ids"]
        for t in texts
    ]


# ---------------------------------------------------------------------------------------------------------
# Bridges


# ---------------------------------------------------------------------------------------------------------
# Running conditions


@dataclass
class SeedRun:
    """One seed-protocol run's fixed inputs: models, layers, items, prompt tokens and captured states."""

    config: ExperimentConfig
    pair: ModelPair
    sender_layer: int
    receiver_layer: int
    items: list[SeedItem]
    tokens: list[list[int]]
    sender_states: list[Tensor]
    receiver_states: list[Tensor]
    two_tokenizers: bool = False
    """The sender tokenizes otherwise: its states are of its own tokens, and only the last one is paired."""

    def generate(
        self, model, token_lists, max_new_tokens: int, vectors=None, mode=None, alpha=1.0
    ) -> list[str]:
        """Greedy continuations of every prompt, decoded; with ``vectors`` (one (pos, d) tensor per
        item), the injection ``mode`` at the receiver layer during prefill."""
        out: list[str] = [""] * len(token_lists)
        eos = model.tokenizer.eos_token_id
        # prompts of any lengths share a batch (left-padded); sorted by length, so little is padding
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        for chunk in batches(len(order), self.config.batch_size):
            group = order[chunk]
            prompts = [token_lists[i] for i in group]
            hooks = []
            if vectors is not None:
                width = max(len(p) for p in prompts)
                batch = right_aligned([vectors[i] for i in group], width)  # as the prompts are padded
                hooks = [(resid_post_name(self.receiver_layer), prefill_hook(batch, mode, alpha))]
            new = greedy_generate(
                model, prompts, max_new_tokens=max_new_tokens, eos_token_id=eos, prefill_hooks=hooks
            )
            for i, ids in zip(group, new, strict=True):
                out[i] = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return out

    def vectors(self, condition: SeedCondition, bridge: FittedBridge | None, seed: int) -> list[Tensor]:
        """The vector injected at every position, per item."""
        own = self.receiver_states
        if condition.vector == "own":
            return own
        if condition.vector == "zero":
            return [torch.zeros_like(h) for h in own]
        if condition.vector == "random":
            generator = torch.Generator().manual_seed(SeedOffset.CONTROLS + seed)
            return [random_like(h, generator) for h in own]
        with torch.no_grad():
            translated = [bridge.translate(x).float() for x in self.sender_states]
        if self.two_tokenizers:  # only the last token's state is defined across tokenizers
            translated = [v[-1:] for v in translated]
        if condition.vector == "translated":
            return translated
        donor = same_length_derangement(self.tokens, seed)
        return [translated[donor[i]] for i in range(len(translated))]

    def prompts(self, condition: SeedCondition) -> list[list[int]]:
        if condition.prompt == "oracle":
            return encode(self.pair.receiver.tokenizer, [oracle_prompt(item) for item in self.items])
        if condition.prompt == "relay":
            sender_prompts = encode(  # in the sender's own tokens; its answer goes over as text
                self.pair.sender.tokenizer, [relay_sender_prompt(item) for item in self.items]
            )
            relays = self.generate(self.pair.sender, sender_prompts, 2 * self.config.options.max_new_tokens)
            return encode(
                self.pair.receiver.tokenizer,
                [relay_receiver_prompt(r, item) for r, item in zip(relays, self.items, strict=True)],
            )
        return self.tokens


def injected_vector(h: Tensor, v: Tensor, mode: str, alpha: float) -> Tensor:
    """What the condition writes on top of (or instead of) h, for the strength audit."""
    if mode == "add-last":
        return alpha * v[:, -1:, :].expand_as(h)
    if mode == "blend":
        return alpha * rescale_to(v.reshape(-1, v.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)
    return v


def strength(run: SeedRun, vectors: list[Tensor], condition: SeedCondition) -> dict[str, float]:
    norms = []
    for h, v in zip(run.receiver_states, vectors, strict=True):
        h, v = h[None], v[None].to(h.dtype)
        new = injected_state(h, v, condition.mode, condition.alpha)
        norms.append(audit.relative_norms(h, new, injected_vector(h, v, condition.mode, condition.alpha)))
    return {key: float(np.mean([n[key] for n in norms])) for key in norms[0]}


def run_condition(
    run: SeedRun, condition: SeedCondition, bridge: FittedBridge | None, seed: int
) -> tuple[list[str], dict | None]:
    """Predictions of one condition run, and its injection strength (None without injection)."""
    if condition.vector is None:
        return run.generate(
            run.pair.receiver, run.prompts(condition), run.config.options.max_new_tokens
        ), None
    vectors = run.vectors(condition, bridge, seed)
    predictions = run.generate(
        run.pair.receiver,
        run.tokens,
        run.config.options.max_new_tokens,
        vectors,
        condition.mode,
        condition.alpha,
    )
    return predictions, strength(run, vectors, condition)


def run_conditions(
    run: SeedRun, bridges: dict[str, list[FittedBridge]], conditions: list[SeedCondition]
) -> tuple[dict, dict, dict, dict]:
    """Every condition's run (per bridge kind and seed where it has them): per-item outcomes, injection
    strengths, predictions and what each key is, keyed by the condition's name in the results."""
    items, seeds, kinds = run.items, [paper_seed(i) for i in run.config.seed_indices], list(bridges)
    if run.two_tokenizers:
        conditions = defined_across_tokenizers(conditions)
    outcomes: dict[str, dict[str, list[np.ndarray]]] = {}
    strengths: dict[str, list[dict]] = {}
    predictions: dict[str, list[list[str]]] = {}
    meta: dict[str, dict] = {}
    jobs = []
    for condition in conditions:
        if condition.uses_bridge:
            for kind in kinds:
                key = condition.name if kind == kinds[0] else f"{condition.name} [{kind}]"
                jobs += [(key, condition, kind, b, b.seed) for b in bridges[kind]]
        elif condition.seeded:
            jobs += [(condition.name, condition, None, None, s) for s in seeds]
        else:
            jobs.append((condition.name, condition, None, None, None))
    for key, condition, kind, bridge, seed in progress.track(jobs, "seed protocol: conditions"):
        texts_out, norms = run_condition(run, condition, bridge, seed or 0)
        scored = [score(p, item.answer) for p, item in zip(texts_out, items, strict=True)]
        for metric in METRICS:
            outcomes.setdefault(key, {}).setdefault(metric, []).append(
                np.array([s[metric] for s in scored], float)
            )
        predictions.setdefault(key, []).append(texts_out)
        if norms is not None:
            strengths.setdefault(key, []).append(norms)
        entry = meta.setdefault(key, {"condition": condition.name, "bridge": kind, "seeds": []})
        entry["seeds"].append(seed)  # per run, for the per-item table (None: a run without randomness)
    return outcomes, strengths, predictions, meta


def defined_across_tokenizers(conditions: list[SeedCondition]) -> list[SeedCondition]:
    """The conditions defined when the two models tokenize differently: those that need no translated
    vector, and the additive one, which adds the last token's (the one state both models have after the
    same text); every-position translation needs equal token ids, so those conditions are left out, and
    said so in one line."""
    kept = [c for c in conditions if not c.uses_bridge or c.mode == "add-last"]
    left_out = [c.name for c in conditions if c not in kept]
    if left_out:
        progress.warn(
            "the two models tokenize differently: left out, as they replace every prompt position with the "
            f"sender's state at the same position (equal token ids): {', '.join(left_out)}"
        )
    return kept


def prepare_seed_run(
    config: ExperimentConfig, pair: ModelPair, sender_layer: int, receiver_layer: int
) -> tuple[SeedRun, dict[str, list[FittedBridge]], dict]:
    """The eval items' tokens and states, every bridge (per kind, per seed) fitted on the fit corpus,
    and results.json's ``bridge_fit`` section: what the run and the analyses under ``--protocol seed``
    start from."""
    items = load_eval()[: config.n_items]
    tokens = encode(pair.receiver.tokenizer, [prompt(item) for item in items])
    two_tokenizers = pair.sender_language is not pair.language
    sender_tokens = (
        encode(pair.sender.tokenizer, [prompt(item) for item in items]) if two_tokenizers else tokens
    )
    seeds = [paper_seed(i) for i in config.seed_indices]
    kinds = list(config.options.bridge_kinds)
    n_texts = DEFAULT_FIT_TEXTS if config.n_fit is None else config.n_fit
    texts, corpus = load_fit_corpus(config.options.fit_corpus, items, n_texts)
    if two_tokenizers:
        sender_texts, receiver_texts = (
            encode(model.tokenizer, texts) for model in (pair.sender, pair.receiver)
        )
        x, y = last_token_pairs(
            pair, sender_texts, receiver_texts, sender_layer, receiver_layer, config.batch_size
        )
    else:
        x, y = fit_pairs(
            pair, encode(pair.receiver.tokenizer, texts), sender_layer, receiver_layer, config.batch_size
        )
    bridges, trivial = fit_bridges(kinds, x, y, seeds, model_device(pair.receiver))
    del x, y
    run = SeedRun(
        config,
        pair,
        sender_layer,
        receiver_layer,
        items,
        tokens,
        item_states(pair.sender, sender_tokens, sender_layer, config.batch_size),
        item_states(pair.receiver, tokens, receiver_layer, config.batch_size),
        two_tokenizers,
    )
    fit_section = {
        "corpus": corpus,
        "n_texts": len(texts),
        **trivial,
        "bridges": {kind: [{"seed": b.seed, **b.fit} for b in bridges[kind]] for kind in kinds},
    }
    return run, bridges, fit_section
