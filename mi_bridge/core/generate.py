"""Greedy decoding with the paper's settings, on a TransformerLens model with a KV cache.

The paper decodes with Hugging Face ``generate(do_sample=False, repetition_penalty=1.3,
no_repeat_ngram_size=3)``. The two logits processors are pure functions here, with Hugging Face's
semantics: the penalty and the n-gram ban look at the whole sequence, prompt included. Hooks given to
:func:`greedy_generate` are active during the prefill (the prompt's forward pass) only, as the paper's
``prefill_only`` injection; every new token then runs against the cached keys and values.

Prompts of one batch must have the same length (no padding, so positions and attention are exactly
those of a single prompt).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from mi_bridge.models.backends import PREFIX_CACHE, HookedModel

REPETITION_PENALTY = 1.3
NO_REPEAT_NGRAM = 3


def apply_repetition_penalty(
    logits: Float[Tensor, "batch d_vocab"], sequences: Sequence[Sequence[int]], penalty: float
) -> Float[Tensor, "batch d_vocab"]:
    """Every token already in a sequence: positive logits divided by ``penalty``, negative multiplied."""
    out = logits.clone()
    for row, sequence in enumerate(sequences):
        seen = torch.tensor(sorted(set(sequence)), dtype=torch.long, device=logits.device)
        if seen.numel() == 0:
            continue
        values = out[row, seen]
        out[row, seen] = torch.where(values < 0, values * penalty, values / penalty)
    return out


def banned_ngram_tokens(sequence: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in ``sequence``."""
    if n < 1 or len(sequence) < n - 1:
        return set()
    prefix = tuple(sequence[len(sequence) - (n - 1) :]) if n > 1 else ()
    return {
        sequence[i + n - 1] for i in range(len(sequence) - n + 1) if tuple(sequence[i : i + n - 1]) == prefix
    }


def ban_repeated_ngrams(
    logits: Float[Tensor, "batch d_vocab"], sequences: Sequence[Sequence[int]], n: int
) -> Float[Tensor, "batch d_vocab"]:
    out = logits.clone()
    for row, sequence in enumerate(sequences):
        banned = sorted(banned_ngram_tokens(sequence, n))
        if banned:
            out[row, banned] = -torch.inf
    return out


def next_tokens(
    logits: Float[Tensor, "batch d_vocab"],
    sequences: Sequence[Sequence[int]],
    *,
    penalty: float = REPETITION_PENALTY,
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
) -> Int[Tensor, " batch"]:
    """The greedy choice after both processors (penalty first, then the ban, as Hugging Face orders them)."""
    scores = ban_repeated_ngrams(
        apply_repetition_penalty(logits, sequences, penalty), sequences, no_repeat_ngram
    )
    return scores.argmax(-1)


@torch.no_grad()
def greedy_generate(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    prefill_hooks: Sequence = (),
    penalty: float = REPETITION_PENALTY,
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
) -> list[list[int]]:
    """The new tokens of each prompt (up to and excluding an end-of-text token)."""
    if not PREFIX_CACHE:  # TL 4's bridge ignores a KV cache: every step reruns the whole sequence
        return _greedy_without_cache(
            model, tokens, max_new_tokens, eos_token_id, prefill_hooks, penalty, no_repeat_ngram
        )
    batch = tokens.shape[0]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, batch)
    # Never padded: an explicit all-ones mask (with a cache TransformerLens would otherwise derive one
    # from the tokenizer's pad token, which for Pythia is the end-of-text token 0).
    no_padding = lambda t: torch.ones_like(t)
    last_logits = lambda residual: model.unembed(model.ln_final(residual[:, -1:]))[:, 0]
    full_depth = model.cfg.n_layers  # the residual before ln_final: unembed the last position only
    with model.hooks(fwd_hooks=list(prefill_hooks)):
        residual = model(
            tokens, past_kv_cache=cache, attention_mask=no_padding(tokens), stop_at_layer=full_depth
        )
    logits = last_logits(residual)
    sequences = tokens.tolist()
    new: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        choice = next_tokens(logits.float(), sequences, penalty=penalty, no_repeat_ngram=no_repeat_ngram)
        record(choice, sequences, new, done, eos_token_id)
        if all(done) or step == max_new_tokens - 1:
            break
        step_tokens = choice[:, None]
        logits = last_logits(
            model(
                step_tokens,
                past_kv_cache=cache,
                attention_mask=no_padding(step_tokens),
                stop_at_layer=full_depth,
            )
        )
    return new


def record(
    choice: Tensor, sequences: list[list[int]], new: list[list[int]], done: list[bool], eos: int | None
) -> None:
    """Append one step's tokens; a row's answer ends at its end-of-text token (the row keeps decoding,
    as in one batched ``generate``, so the others see the same batch)."""
    for row, token in enumerate(choice.tolist()):
        sequences[row].append(token)
        if done[row]:
            continue
        if token == eos:
            done[row] = True
        else:
            new[row].append(token)


def prompt_only(hook_fn, n_prompt: int):
    """A hook applied to the first ``n_prompt`` positions only: the prefill-only injection when a step
    reruns the prompt together with the tokens generated so far."""

    def wrapped(act: Tensor, hook) -> Tensor:
        return torch.cat([hook_fn(act[:, :n_prompt], hook=hook), act[:, n_prompt:]], dim=1)

    return wrapped


def _greedy_without_cache(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    eos_token_id: int | None,
    prefill_hooks: Sequence,
    penalty: float,
    no_repeat_ngram: int,
) -> list[list[int]]:
    """``greedy_generate`` without a KV cache (TransformerLens 4): each step runs the whole sequence, the
    hooks on the prompt's positions only. Causal attention makes it the cached decoding's function."""
    from mi_bridge.models.backends import residual_at

    n_prompt, batch = tokens.shape[1], tokens.shape[0]
    hooks = [(name, prompt_only(fn, n_prompt)) for name, fn in prefill_hooks]
    sequences, new, done = tokens.tolist(), [[] for _ in range(batch)], [False] * batch
    for _ in range(max_new_tokens):
        current = torch.tensor(sequences, device=tokens.device)
        residual = residual_at(model, current, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
        logits = model.unembed(model.ln_final(residual[:, -1:]))[:, 0]
        choice = next_tokens(logits.float(), sequences, penalty=penalty, no_repeat_ngram=no_repeat_ngram)
        record(choice, sequences, new, done, eos_token_id)
        if all(done):
            break
    return new
