"""A usability-trained bridge: the alignment fit's linear map, trained through the frozen receiver.

Beyond the paper: the same map family, started from the alignment fit, is trained so that injecting
its output reproduces the receiver's oracle-run answer distribution (KL at the answer position); only
the map's parameters get gradients. A held-out part of the fit items picks the step (early stopping).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace as dataclass_replace

import torch

from mi_bridge.bridges.ridge import LinearBridge, Standardizer
from mi_bridge.core.capture import answer_logits, batches
from mi_bridge.core.device import model_device
from mi_bridge.core.inject import MODES, inject_residual
from mi_bridge.runtime.backend import residual_at
from mi_bridge.seeds import SeedOffset


def add_training_arguments(parser) -> None:
    """The training flags of every script that trains a usability bridge."""
    parser.add_argument(
        "--train-steps", type=int, default=300, help="optimizer steps of the usability bridge (default 300)"
    )
    parser.add_argument("--train-lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    parser.add_argument(
        "--train-mode",
        choices=MODES,
        default="replace",
        help="injection mode the bridge is trained for (default replace)",
    )


def train_usability_bridge(
    receiver,
    tokens,
    oracle_logits,
    sender_states,
    start: LinearBridge,
    *,
    layer: int,
    position: int,
    mode: str = "replace",
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    validation_fraction: float = 0.2,
    eval_every: int = 25,
) -> tuple[LinearBridge, dict[str, list[float]]]:
    """Train (weight, output offset) of ``start`` so that injection reproduces the oracle answer distribution.

    The receiver stays frozen: its prefix up to ``layer`` is computed once without gradients, and the
    optimizer holds only the map's parameters. A held-out part of the items picks the step with the
    least validation KL (early stopping), so the map is not judged after it has memorized its items.
    Training runs on the receiver's device (the minibatches and their order are drawn on the CPU, so
    they are the same on every device); the trained bridge is returned on the CPU.
    """
    device = model_device(receiver)
    with torch.no_grad():
        prefix = torch.cat(
            [
                residual_at(receiver, tokens[c].to(device), stop_at_layer=layer + 1)
                for c in batches(len(tokens), 256)
            ]
        )
        target = oracle_logits.to(device).log_softmax(-1)
        inputs = start.x_norm(sender_states).to(device)
    y_std, y_mean = start.y_norm.std.to(device), start.y_norm.mean.to(device)
    generator = torch.Generator().manual_seed(SeedOffset.USABILITY + seed)
    order = torch.randperm(len(tokens), generator=generator)
    n_val = max(1, int(len(tokens) * validation_fraction))
    val, train = order[:n_val], order[n_val:]
    weight = start.weight.to(device).clone().requires_grad_(True)
    offset = torch.zeros(start.d_receiver, device=device, requires_grad=True)  # in standardized units
    optimizer = torch.optim.Adam([weight, offset], lr=lr)

    def kl(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(device)
        vectors = (inputs[rows] @ weight + offset) * y_std + y_mean
        logits = answer_logits(
            receiver, inject_residual(prefix[rows], position, vectors, mode), start_at_layer=layer + 1
        )
        return torch.nn.functional.kl_div(
            logits.log_softmax(-1), target[rows], log_target=True, reduction="batchmean"
        )

    history = {"train": [], "validation": [], "validation_step": []}
    best = (float("inf"), weight.detach().clone(), offset.detach().clone())
    with frozen(receiver):
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                with torch.no_grad():
                    value = kl(val).item()
                history["validation"].append(value)
                history["validation_step"].append(step)
                if value < best[0]:
                    best = (value, weight.detach().clone(), offset.detach().clone())
            if step == steps:
                break
            loss = kl(train[torch.randperm(len(train), generator=generator)[:batch_size]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["train"].append(loss.item())
    best_weight, best_offset = best[1].cpu(), best[2].cpu()  # results live on the CPU
    y_norm = Standardizer(start.y_norm.mean + best_offset * start.y_norm.std, start.y_norm.std)
    trained = dataclass_replace(
        start,
        weight=best_weight,
        y_norm=y_norm,
        metadata=start.metadata | {"trained_for": f"usability ({mode})"},
    )
    return trained, history


@contextlib.contextmanager
def frozen(model):
    """The model's parameters stop requiring gradients inside the block (restored after, even on error)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
