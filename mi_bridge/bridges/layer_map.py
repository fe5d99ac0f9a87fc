"""Which sender layer each receiver layer of the KV channel reads (light: the config checks the flag)."""

from __future__ import annotations

from dataclasses import dataclass

from mi_bridge.errors import UserError

LAYER_MAPS = ("last-aligned", "identity", "shift:K")


@dataclass(frozen=True)
class LayerMap:
    """Receiver layer j reads sender layer j + offset, clamped to the sender's layers. ``last-aligned``
    (C2C's default): offset n_sender - n_receiver, so the last layers meet; ``identity``: offset 0;
    ``shift:K``: offset K."""

    name: str = "last-aligned"
    shift: int = 0

    @classmethod
    def parse(cls, spec: str) -> LayerMap:
        if spec in ("last-aligned", "identity"):
            return cls(spec)
        prefix, _, number = spec.partition(":")
        if prefix == "shift" and number.lstrip("-").isdigit():
            return cls("shift", int(number))
        raise UserError(f"unknown layer map {spec!r} (known: {', '.join(LAYER_MAPS)})")

    def __str__(self) -> str:
        return f"shift:{self.shift}" if self.name == "shift" else self.name

    def sender_layers(self, n_sender: int, n_receiver: int) -> tuple[int, ...]:
        """The sender layer read by each receiver layer 0 .. n_receiver - 1."""
        offset = {"last-aligned": n_sender - n_receiver, "identity": 0}.get(self.name, self.shift)
        return tuple(min(max(j + offset, 0), n_sender - 1) for j in range(n_receiver))
