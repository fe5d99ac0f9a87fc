"""A usability-trained bridge on one seed's fit items: the alignment fit, then trained through the frozen
receiver (``mi_bridge.bridges.usability``)."""

from __future__ import annotations

from mi_bridge.bridges.ridge import LinearBridge
from mi_bridge.bridges.usability import train_usability_bridge
from mi_bridge.core.capture import capture_resid_post
from mi_bridge.protocols.split.prepare import SeedContext


def usability_bridge(
    seed: SeedContext,
    sender_layer: int,
    receiver_layer: int,
    *,
    mode: str = "replace",
    steps: int = 300,
    lr: float = 3e-3,
) -> tuple[LinearBridge, LinearBridge, dict[str, list[float]]]:
    """(alignment fit, usability-trained bridge, training history) on one seed's fit items."""
    alignment = seed.fit_bridge(sender_layer, receiver_layer)
    x = seed.sender_states([sender_layer])[sender_layer]
    fit = seed.items.subset(seed.fit_idx)
    oracle = capture_resid_post(
        seed.pair.receiver,
        fit.oracle_tokens,
        layers=[0],
        positions=[-1],
        with_answer_logits=True,
        batch_size=seed.config.batch_size,
    ).answer_logits
    trained, history = train_usability_bridge(
        seed.pair.receiver,
        fit.placeholder_tokens,
        oracle,
        x[seed.fit_idx],
        alignment,
        layer=receiver_layer,
        position=seed.position(),
        mode=mode,
        steps=steps,
        lr=lr,
        batch_size=seed.config.batch_size,
        seed=seed.seed,
    )
    return alignment, trained, history
