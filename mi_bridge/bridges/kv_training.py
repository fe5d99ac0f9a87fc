"""One training loop for every ``KVSource`` (the fuser and its learned-prefix control): the source's keys
and values are delivered to the frozen receiver as a prefix cache, the receiver reads its own text after
it with the source's gates on the delivered positions, and the loss is the cross-entropy of the answer
after that text: over the item's k candidates by default, so that what is rewarded is the choice the
task measures, not the answer's format (a full-vocabulary loss rewards "say a city" as much as the right
city). Only the source trains; both models are frozen (their parameters stop requiring gradients for the
duration, so none are computed for them). The loop shuffles with its own seed and keeps the state with
the best held-out k-way accuracy (ties: the lower held-out loss), stopping after ``patience`` epochs
without a better one: given a seed, the same source and items train to the same numbers.
"""

from __future__ import annotations

import copy
import math
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
from mi_bridge.runtime.kv_entries import KV, capture_kv, delivered_cache, gate_hooks


@dataclass
class KVItems:
    """The task's items: what the sender reads (its hop-1 prompt P, or the receiver's facts F) and the
    receiver's own text after the delivered positions (each left-padded, 1 in the mask for a real token),
    the answer token that follows it and the item's k candidate answers."""

    sender_tokens: Int[Tensor, "n p"]
    sender_mask: Int[Tensor, "n p"]
    receiver_tokens: Int[Tensor, "n q"]
    receiver_mask: Int[Tensor, "n q"]
    answers: Int[Tensor, " n"]
    candidates: Int[Tensor, "n k"] | None = None
    """The k in-context answers (the answer among them): the candidate loss and k-way accuracy read them."""
    sender_positions: Int[Tensor, "n delivered"] | None = None
    """Per delivered position, the sender position whose keys and values it carries: a text-span
    alignment of two tokenizers (``models.alignment``). None: delivered position i is sender position i."""

    def __len__(self) -> int:
        return self.answers.shape[0]

    def rows(self, index: Int[Tensor, " rows"] | slice) -> KVItems:
        return KVItems(*(None if (t := getattr(self, f.name)) is None else t[index] for f in fields(self)))

    @property
    def delivered_mask(self) -> Int[Tensor, "n delivered"]:
        """The mask of the delivered positions."""
        if self.sender_positions is None:
            return self.sender_mask
        return self.sender_mask.gather(1, self.sender_positions)

    @property
    def gold_index(self) -> Int[Tensor, " n"]:
        """Where the answer sits among the candidates."""
        return (self.candidates == self.answers[:, None]).int().argmax(1)


def sender_entries(sender: HookedModel, items: KVItems) -> list[KV]:
    """The sender's keys and values of its text (no gradients), at the delivered positions."""
    with torch.no_grad():
        entries = capture_kv(sender, items.sender_tokens, items.sender_mask)
    return aligned(entries, items.sender_positions)


def aligned(entries: list[KV], positions: Int[Tensor, "n delivered"] | None) -> list[KV]:
    """Each row's entries at ``positions`` (None: as they are)."""
    if positions is None:
        return entries
    index = positions[:, :, None, None].to(entries[0][0].device)
    pick = lambda t: t.gather(1, index.expand(-1, -1, *t.shape[2:]))
    return [(pick(keys), pick(values)) for keys, values in entries]


LOSSES = ("candidates", "vocabulary")
WEIGHT_DECAY = 0.0
"""AdamW's weight decay: none."""


@dataclass
class TrainingLog:
    heldout_loss: list[float] = field(default_factory=list)
    """Mean held-out loss before training (index 0) and after each epoch."""
    heldout_accuracy: list[float] = field(default_factory=list)
    """Held-out k-way accuracy before training (index 0) and after each epoch: the checkpoint's criterion."""
    fit_loss: list[float] = field(default_factory=list)
    """Mean loss over each epoch's batches (index 0 is epoch 1)."""
    fit_accuracy: list[float] = field(default_factory=list)
    """k-way accuracy over each epoch's batches, before each batch's step (index 0 is epoch 1)."""
    best_epoch: int = 0
    """The epoch whose state the source holds (0: the untrained source)."""
    train_accuracy: float = float("nan")
    """k-way accuracy of the kept state on the items it was trained on."""
    loss: str = "candidates"
    """What the loss was: cross-entropy over the k candidates, or over the full vocabulary."""
    n_train: int = 0
    n_heldout: int = 0


def answer_logits(
    source: KVSource, receiver: HookedModel, items: KVItems, sender: HookedModel | None = None
) -> Float[Tensor, "n d_vocab"]:
    """The receiver's logits after its text with the source's keys and values delivered before it and
    its gates on them; the sender's cache is captured without gradients when the source reads it."""
    sender_kv = None
    if source.reads_sender:
        if sender is None:
            raise ValueError(f"a {source.kind} source reads the sender: pass the sender model")
        sender_kv = sender_entries(sender, items)
    entries, mask = source(sender_kv, items.delivered_mask, len(items))
    cache = delivered_cache(receiver, entries, mask)
    with receiver.hooks(fwd_hooks=gate_hooks(source.log_gates(), cache.length)):
        logits = run_tokens(receiver, items.receiver_tokens, cache, items.receiver_mask)
    return logits[:, -1]


def loss_of(
    logits: Float[Tensor, "n d_vocab"], items: KVItems, loss: str = "candidates"
) -> tuple[Float[Tensor, ""], Float[Tensor, " n"]]:
    """The mean cross-entropy of the answers (over the k candidates, or the full vocabulary), and which
    items the k-way choice gets right."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    logits = logits.float()
    if items.candidates is None:
        if loss == "candidates":
            raise ValueError("the candidate loss needs the items' candidates")
        return F.cross_entropy(logits, items.answers), torch.full((len(items),), float("nan"))
    among = logits.gather(1, items.candidates.to(logits.device))
    gold = items.gold_index.to(logits.device)
    correct = (among.argmax(1) == gold).float()
    if loss == "candidates":
        return F.cross_entropy(among, gold), correct
    return F.cross_entropy(logits, items.answers.to(logits.device)), correct


def answer_loss(
    source: KVSource,
    receiver: HookedModel,
    items: KVItems,
    sender: HookedModel | None = None,
    loss: str = "candidates",
) -> Float[Tensor, ""]:
    """Mean cross-entropy of the answers (``loss_of``)."""
    return loss_of(answer_logits(source, receiver, items, sender), items, loss)[0]


def evaluate_source(
    source: KVSource,
    receiver: HookedModel,
    items: KVItems,
    sender: HookedModel | None,
    batch_size: int,
    loss: str = "candidates",
) -> tuple[float, float]:
    """Mean answer loss and k-way accuracy over ``items``, in batches, without gradients."""
    total, right = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = items.rows(slice(start, start + batch_size))
            value, correct = loss_of(answer_logits(source, receiver, batch, sender), batch, loss)
            total, right = total + float(value) * len(batch), right + float(correct.sum())
    return total / len(items), right / len(items)


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
    """Train ``source`` in place on ``fit`` as ``options`` say (epochs, train_batch, lr, patience, loss;
    default: the channel's defaults), keeping the state of the best held-out k-way accuracy (ties: the
    lower held-out loss) and stopping after ``patience`` epochs without a better one; returns the log.
    Items without candidates (full-vocabulary loss only) are judged by the held-out loss alone. A
    ``description`` shows a progress bar over the epochs."""
    options = options or KVOptions()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(source.parameters(), lr=options.lr, weight_decay=WEIGHT_DECAY)
    log = TrainingLog(loss=options.loss, n_train=len(fit), n_heldout=len(heldout))

    def judge() -> tuple[float, float]:
        value, accuracy = evaluate_source(
            source, receiver, heldout, sender, options.train_batch, options.loss
        )
        log.heldout_loss.append(value)
        log.heldout_accuracy.append(accuracy)
        return (0.0 if math.isnan(accuracy) else accuracy, -value)  # larger is better

    best, best_state, waited = judge(), copy.deepcopy(source.state_dict()), 0
    with frozen(receiver, sender):
        epochs = range(1, options.epochs + 1)
        for epoch in epochs if description is None else track(epochs, description):
            order, losses, right = torch.randperm(len(fit), generator=generator), [], 0.0
            for start in range(0, len(fit), options.train_batch):
                batch = fit.rows(order[start : start + options.train_batch])
                loss, correct = loss_of(answer_logits(source, receiver, batch, sender), batch, options.loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()) * len(batch))
                right += float(correct.sum())
            log.fit_loss.append(sum(losses) / len(fit))
            log.fit_accuracy.append(right / len(fit))
            now = judge()
            if now > best:
                best, log.best_epoch, best_state, waited = now, epoch, copy.deepcopy(source.state_dict()), 0
            else:
                waited += 1
                if waited >= options.patience:
                    break
    source.load_state_dict(best_state)
    log.train_accuracy = evaluate_source(source, receiver, fit, sender, options.train_batch, options.loss)[1]
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
