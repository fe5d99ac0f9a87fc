"""The KV channel's options (docs/kv_channel.md), declared once: the split protocol's ``--kv-*`` flags,
the ``kv`` object of config.json and what ``kv_channel.run_seed_kv`` and ``kv_training`` read, by the
same names (light: the config checks them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

from mi_bridge.bridges.layer_map import LayerMap
from mi_bridge.config import OptionGroup
from mi_bridge.errors import UserError

KV_SOURCES = ("prompt", "facts")
KV_LOSSES = ("candidates", "vocabulary")


@dataclass
class KVOptions(OptionGroup):
    """The KV channel: whether it runs, how the sender's cache is mapped, and how the fuser and its
    learned-prefix control are trained (AdamW on their parameters alone, early-stopped)."""

    recorded_before: ClassVar[dict[str, object]] = {"source": "prompt", "loss": "vocabulary"}
    """What a record written before ``source`` and ``loss`` existed ran with (``config.record``): the
    sender read P, and the sources were trained on the full vocabulary."""

    channel: bool = False
    """Also run the second channel (docs/kv_channel.md): the sender's key-value cache of its prompt, mapped
    and fused into a prefix of the receiver's, against a learned prefix and every control, at each site.
    Trains per seed (about 20 CPU minutes on SmolLM2 at 400 items)."""
    source: str = "prompt"
    """KV channel: what the sender reads. prompt: its hop-1 prompt P, before the receiver's prompt with
    the placeholder; facts: the receiver's hop-2 facts F, before the receiver's query alone (context
    transfer: the receiver reading F itself is the oracle prompt, the channel's ceiling by construction;
    two tokenizers are aligned by text span)."""
    loss: str = "candidates"
    """KV channel: the trained sources' loss: cross-entropy over the item's k candidate answers
    (candidates), or over the full vocabulary (vocabulary, which also rewards the answer's format)."""
    layer_map: str = "last-aligned"
    """KV channel: which sender layer feeds each receiver layer: last-aligned (C2C's), identity or
    shift:K (receiver layer j reads sender layer j+K, clamped)."""
    rank: int = 8
    """KV channel: the rank of the fuser's trained correction."""
    epochs: int = 30
    """KV channel: the most training epochs of the fuser and of the learned prefix."""
    lr: float = 3e-3
    """KV channel: AdamW learning rate."""
    train_batch: int = 16
    """KV channel: items per training step."""
    patience: int = 3
    """KV channel: epochs without a better held-out loss before training stops."""

    def __post_init__(self) -> None:
        for name, allowed in (("source", KV_SOURCES), ("loss", KV_LOSSES)):
            if getattr(self, name) not in allowed:
                raise UserError(
                    f"unknown --kv-{name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}"
                )
        for name in ("rank", "epochs", "lr", "train_batch", "patience"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"--kv-{name.replace('_', '-')} must be positive (got {value})")
        try:
            self.layer_map = str(LayerMap.parse(self.layer_map))
        except UserError as err:
            raise UserError(f"--kv-layer-map: {err}") from None

    def check_run(self) -> None:
        """A ``--kv-*`` option without ``--kv-channel`` is refused: the run would ignore it."""
        if self.channel:
            return
        changed = [f.name for f in fields(self) if getattr(self, f.name) != f.default]
        if changed:
            flag = "--kv-" + changed[0].replace("_", "-")
            raise UserError(f"{flag} applies to the KV channel: add --kv-channel")

    def one_tokenizer_reason(self) -> str | None:
        if self.channel and self.source == "prompt":
            return (
                "--kv-channel --kv-source prompt maps the sender's cache of P onto the receiver's cache of the "
                "same tokens (--kv-source facts aligns two tokenizers by text span)"
            )
        return None
