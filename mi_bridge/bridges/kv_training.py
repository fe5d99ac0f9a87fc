"""One training loop for every ``KVSource`` (the fuser and its learned-prefix control): the source's keys
and values are delivered to the frozen receiver as a prefix cache, the receiver reads its own prompt Q
after it with the source's gates on the delivered positions, and the loss is the next-token
cross-entropy of the answer after Q. Only the source trains; both models are frozen (their parameters
stop requiring gradients for the duration, so none are computed for them). The loop shuffles with its own
seed and keeps the state with the least held-out loss, stopping after ``patience`` epochs without a
better one: given a seed, the same source and items train to the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.bridges.kv_fuser import KVSource
from mi_bridge.bridges.kv_options import KVOptions
from mi_bridge.core.progress import track
from mi_bridge.runtime.backend import HookedModel
from mi_bridge.runtime.kv_cache import run_tokens
from mi_bridge.runtime.kv_entries import capture_kv, delivered_cache, gate_hooks


@dataclass
class KVItems:
    """The task's items: the sender's hop-1 prompt P and the receiver's prompt Q (each left-padded, 1 in
    the mask for a real token), and the answer token that follows Q."""

    sender_tokens: Int[Tensor, "n p"]
    sender_mask: Int[Tensor, "n p"]
    receiver_tokens: Int[Tensor, "n q"]
    receiver_mask: Int[Tensor, "n q"]
    answers: Int[Tensor, " n"]

    def __len__(self) -> int:
        return self.answers.shape[0]

    def rows(self, index: Int[Tensor, " rows"] | slice) -> KVItems:
        return KVItems(*(getattr(self, f.name)[index] for f in fields(self)))


WEIGHT_DECAY = 0.0
"""AdamW's weight decay: none."""


@dataclass
class TrainingLog:
    heldout_loss: list[float] = field(default_factory=list)
    """Mean held-out loss before training (index 0) and after each epoch."""
    fit_loss: list[float] = field(default_factory=list)
    """Mean loss over each epoch's batches (index 0 is epoch 1)."""
    best_epoch: int = 0
    """The epoch whose state the source holds (0: the untrained source)."""


def answer_logits(
    source: KVSource, receiver: HookedModel, items: KVItems, sender: HookedModel | None = None
) -> Float[Tensor, "n d_vocab"]:
    """The receiver's logits after Q with the source's keys and values delivered before it and its gates
    on them; the sender's cache of P is captured without gradients when the source reads it."""
    sender_kv = None
    if source.reads_sender:
        if sender is None:
            raise ValueError(f"a {source.kind} source reads the sender: pass the sender model")
        with torch.no_grad():
            sender_kv = capture_kv(sender, items.sender_tokens, items.sender_mask)
    entries, mask = source(sender_kv, items.sender_mask, len(items))
    cache = delivered_cache(receiver, entries, mask)
    with receiver.hooks(fwd_hooks=gate_hooks(source.log_gates(), cache.length)):
        logits = run_tokens(receiver, items.receiver_tokens, cache, items.receiver_mask)
    return logits[:, -1]


def answer_loss(
    source: KVSource, receiver: HookedModel, items: KVItems, sender: HookedModel | None = None
) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy of the answers."""
    return F.cross_entropy(answer_logits(source, receiver, items, sender).float(), items.answers)


def heldout_loss(
    source: KVSource, receiver: HookedModel, items: KVItems, sender: HookedModel | None, batch_size: int
) -> float:
    """Mean answer loss over ``items``, in batches, without gradients."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = items.rows(slice(start, start + batch_size))
            total += float(answer_loss(source, receiver, batch, sender)) * len(batch)
    return total / len(items)


def train_kv_source(
    source: KVSource,
    receiver: HookedModel,
    fit: KVItems,
    heldout: KVItems,
    *,
    sender: HookedModel | None = None,
    options: KVOptions | None = None,
    seed: int = 0,
    description: str | None = None,
) -> TrainingLog:
    """Train ``source`` in place on ``fit``, early-stopped on ``heldout``, as ``options`` say (epochs,
    train_batch, lr, patience; default: the channel's defaults); returns the losses. A ``description``
    shows a progress bar over the epochs."""
    options = options or KVOptions()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(source.parameters(), lr=options.lr, weight_decay=WEIGHT_DECAY)
    log = TrainingLog(heldout_loss=[heldout_loss(source, receiver, heldout, sender, options.train_batch)])
    best_state, waited = copy.deepcopy(source.state_dict()), 0
    with frozen(receiver, sender):
        epochs = range(1, options.epochs + 1)
        for epoch in epochs if description is None else track(epochs, description):
            order, losses = torch.randperm(len(fit), generator=generator), []
            for start in range(0, len(fit), options.train_batch):
                batch = fit.rows(order[start : start + options.train_batch])
                loss = answer_loss(source, receiver, batch, sender)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()) * len(batch))
            log.fit_loss.append(sum(losses) / len(fit))
            log.heldout_loss.append(heldout_loss(source, receiver, heldout, sender, options.train_batch))
            if log.heldout_loss[-1] < log.heldout_loss[log.best_epoch]:
                log.best_epoch, best_state, waited = epoch, copy.deepcopy(source.state_dict()), 0
            else:
                waited += 1
                if waited >= options.patience:
                    break
    source.load_state_dict(best_state)
    return log


@contextmanager
def frozen(*models: HookedModel | None) -> Iterator[None]:
    """The models' parameters stop requiring gradients inside the block (restored after, even on error)."""
    parameters = [p for m in models if m is not None for p in m.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)
