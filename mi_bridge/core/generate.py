"""Greedy decoding with the paper's settings, batched across prompt lengths, on either backend's KV cache.

The paper decodes with Hugging Face ``generate(do_sample=False, repetition_penalty=1.3,
no_repeat_ngram_size=3)``. The two logits processors are pure functions here, with Hugging Face's
semantics: the penalty and the n-gram ban look at the whole sequence, prompt included (the unpadded
one: padding is never part of a sequence). Hooks given to :func:`greedy_generate` are active during the
prefill (the prompt's forward pass) only, as the paper's ``prefill_only`` injection; every new token then
runs against the cached keys and values (``runtime.kv_cache``, on both backends).

Prompts of different lengths share a batch, padded on the left: the attention mask hides the padding
and both backends derive each row's positions from it (rotary models included), so every row computes
what it computes alone. A prefill hook sees the padded batch; its edits reach the real positions only
(``left_pad`` gives the layout to align per-position vectors to).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_bridge.core.device import model_device
from mi_bridge.runtime.backend import HookedModel
from mi_bridge.runtime.kv_cache import decoding_cache, run_tokens

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


class Processors:
    """Both processors of ``next_tokens``, kept up to date token by token instead of recomputed from every
    whole sequence at every step: a mask of the tokens each row has seen (the penalty, one tensor op) and
    each row's (n-1)-grams with the tokens that followed them (the ban, a look-up). The same choices as
    ``next_tokens`` on the same sequences (tests/core/test_generate.py)."""

    def __init__(
        self,
        sequences: list[list[int]],
        d_vocab: int,
        device: torch.device | str,
        *,
        penalty: float = REPETITION_PENALTY,
        no_repeat_ngram: int = NO_REPEAT_NGRAM,
    ):
        self.sequences, self.penalty, self.n = sequences, penalty, no_repeat_ngram
        self.seen = torch.zeros(len(sequences), d_vocab, dtype=torch.bool, device=device)
        self.followers: list[dict[tuple[int, ...], set[int]]] = [{} for _ in sequences]
        for row, sequence in enumerate(sequences):
            if sequence:
                self.seen[row, torch.as_tensor(sequence, device=device)] = True
            for end in range(len(sequence)):
                self._remember(row, end)

    def _remember(self, row: int, end: int) -> None:
        """The n-gram of ``sequences[row]`` that ends at position ``end``, if it has n tokens."""
        if self.n < 1 or end < self.n - 1:
            return
        sequence = self.sequences[row]
        prefix = tuple(sequence[end - self.n + 1 : end])
        self.followers[row].setdefault(prefix, set()).add(sequence[end])

    def choose(self, logits: Float[Tensor, "batch d_vocab"]) -> Int[Tensor, " batch"]:
        """The greedy choice after the penalty and the ban."""
        penalized = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
        scores = torch.where(self.seen, penalized, logits)
        if self.n >= 1:
            for row, sequence in enumerate(self.sequences):
                if len(sequence) < self.n - 1:
                    continue
                key = tuple(sequence[len(sequence) - self.n + 1 :]) if self.n > 1 else ()
                banned = self.followers[row].get(key)
                if banned:
                    scores[row, sorted(banned)] = -torch.inf
        return scores.argmax(-1)

    def append(self, tokens: Int[Tensor, " batch"]) -> None:
        """Each row's next token (already appended to ``sequences`` by ``record``)."""
        self.seen[torch.arange(len(tokens), device=tokens.device), tokens] = True
        for row, sequence in enumerate(self.sequences):
            self._remember(row, len(sequence) - 1)


def left_pad(
    token_lists: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[Int[Tensor, "batch width"], Bool[Tensor, "batch width"]]:
    """Prompts of any lengths as one batch padded on the left with ``pad_id`` (never attended), and the
    mask of real tokens: row i's prompt fills its last len(prompt_i) positions."""
    width = max(len(tokens) for tokens in token_lists)
    tokens = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.bool)
    for row, prompt in enumerate(token_lists):
        if prompt:
            tokens[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt) :] = True
    return tokens, mask


def right_aligned(vectors: Sequence[Tensor], width: int) -> Float[Tensor, "batch width d"]:
    """Per-position vectors laid out as ``left_pad`` lays out their prompts (zeros at the padding)."""
    out = vectors[0].new_zeros(len(vectors), width, vectors[0].shape[-1])
    for row, v in enumerate(vectors):
        out[row, width - v.shape[0] :] = v
    return out


def on_real_positions(hook_fn, mask: Bool[Tensor, "batch width"]):
    """``hook_fn`` with its edits kept on the real (unpadded) positions only."""

    def wrapped(act: Tensor, hook) -> Tensor:
        if act.shape[:2] != mask.shape:
            raise ValueError(
                f"a prefill hook on a padded batch acts on [batch, pos, ...] activations; {hook.name} has "
                f"shape {tuple(act.shape)}"
            )
        keep = mask.to(act.device).view(*mask.shape, *[1] * (act.dim() - 2))
        return torch.where(keep, hook_fn(act, hook=hook), act)

    return wrapped


@torch.no_grad()
def greedy_generate(
    model: HookedModel,
    prompts: Sequence[Sequence[int]] | Int[Tensor, "batch pos"],
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    prefill_hooks: Sequence = (),
    penalty: float = REPETITION_PENALTY,
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
) -> list[list[int]]:
    """The new tokens of each prompt (up to and excluding an end-of-text token), all prompts in one
    batch whatever their lengths (``left_pad``); ``prefill_hooks`` act on that padded batch during the
    prefill, on its real positions only. The batch stops once every row has ended."""
    token_lists = prompts.tolist() if isinstance(prompts, Tensor) else [list(p) for p in prompts]
    tokens, mask = left_pad(token_lists)
    device = model_device(model)
    tokens, padded = tokens.to(device), not bool(mask.all())
    batch, n_layers = len(token_lists), model.cfg.n_layers
    cache = decoding_cache(model, batch, device)
    # the residual after the last block, unembedded at the last position only
    last_logits = lambda residual: model.unembed(model.ln_final(residual[:, -1:]))[:, 0]
    hooks = [(name, on_real_positions(fn, mask) if padded else fn) for name, fn in prefill_hooks]
    with model.hooks(fwd_hooks=hooks):
        residual = run_tokens(
            model, tokens, cache, mask.long().to(device) if padded else None, stop_at_layer=n_layers
        )
    logits = last_logits(residual)
    sequences = [list(p) for p in token_lists]
    processors = Processors(
        sequences, logits.shape[-1], device, penalty=penalty, no_repeat_ngram=no_repeat_ngram
    )
    new: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        choice = processors.choose(logits.float())
        record(choice, sequences, new, done, eos_token_id)
        processors.append(choice)
        if all(done) or step == max_new_tokens - 1:
            break
        step_mask = torch.ones(batch, 1, dtype=torch.long, device=device) if padded else None
        logits = last_logits(run_tokens(model, choice[:, None], cache, step_mask, stop_at_layer=n_layers))
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
