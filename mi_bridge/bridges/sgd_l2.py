"""The seed paper's bridge: a linear layer with bias on L2-normalized sender states, trained by SGD to
the L2-normalized receiver states (its ``train_translation_layer``).

Recipe: MSE, AdamW at lr 1e-4, 30 epochs, batch 32, linear warm-up over 100 steps then linear decay to
0, gradient norm clipped at 1.0; the last 10% of the pairs (in corpus order, unshuffled) are held out
and the epoch with the least held-out loss is kept. The output is *not* renormalized or rescaled: like
the paper's ``translate``, it lives near the unit sphere, whatever the receiver's own norm is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.bridges.base import Bridge, register
from mi_bridge.bridges.metrics import l2_fit_quality, unit


@dataclass(frozen=True)
class SGDRecipe:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    clip: float = 1.0
    validation_fraction: float = 0.1


@register
@dataclass
class SGDL2Bridge(Bridge):
    """``W x̂ + b`` with x̂ = x / ‖x‖."""

    kind: ClassVar[str] = "sgd-l2"

    weight: Float[Tensor, "d_sender d_receiver"]
    bias: Float[Tensor, " d_receiver"]
    history: dict = field(default_factory=dict)
    """Per-epoch train and held-out losses, and the kept epoch."""
    metadata: dict = field(default_factory=dict)

    def __call__(self, x: Float[Tensor, "*batch d_sender"]) -> Float[Tensor, "*batch d_receiver"]:
        return unit(x.to(self.weight)) @ self.weight + self.bias

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    def numbers(self) -> dict:
        return {"history": self.history}

    @classmethod
    def shapes(cls, d_sender: int, d_receiver: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (d_sender, d_receiver), "bias": (d_receiver,)}

    @classmethod
    def from_saved(cls, tensors: dict[str, Tensor], numbers: dict, metadata: dict) -> SGDL2Bridge:
        return cls(
            weight=tensors["weight"],
            bias=tensors["bias"],
            history=numbers.get("history", {}),
            metadata=metadata,
        )

    @classmethod
    def fit_and_score(cls, x, y, *, n_heldout: int, seed: int, device="cpu") -> tuple[SGDL2Bridge, dict]:
        """Trained on all pairs, early-stopped on its own held-out last ``validation_fraction`` of them
        (the same last ``n_heldout`` pairs when the fractions agree); scored in L2-normalized space."""
        bridge = cls.fit(x, y, seed=seed, device=device)
        fit = l2_fit_quality(bridge(x[-n_heldout:]), y[-n_heldout:])
        return bridge, fit | {"best_epoch": bridge.history["best_epoch"]}

    @classmethod
    def fit(
        cls,
        x: Float[Tensor, "n d_sender"],
        y: Float[Tensor, "n d_receiver"],
        *,
        seed: int,
        recipe: SGDRecipe = SGDRecipe(),
        device: torch.device | str = "cpu",
    ) -> SGDL2Bridge:
        """Train on (x, y) pairs in corpus order; ``seed`` sets the initialization and the batch order.

        The steps run on ``device`` (thousands of small batches: per-batch work); the initialization and
        the batch order are drawn on the CPU, so they are the same on every device, and the bridge is
        returned on the CPU."""
        torch.manual_seed(seed)
        layer = torch.nn.Linear(x.shape[1], y.shape[1], bias=True).to(device)
        xs, ys = unit(x.float()).to(device), unit(y.float()).to(device)
        n_val = max(1, int(len(xs) * recipe.validation_fraction))
        n_train = len(xs) - n_val
        x_train, y_train, x_val, y_val = xs[:n_train], ys[:n_train], xs[n_train:], ys[n_train:]
        optimizer = torch.optim.AdamW(layer.parameters(), lr=recipe.lr)
        steps_per_epoch = -(-n_train // recipe.batch_size)
        total = recipe.epochs * steps_per_epoch

        def schedule(step: int) -> float:
            if step < recipe.warmup_steps:
                return step / max(1, recipe.warmup_steps)
            return max(0.0, 1.0 - (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        generator = torch.Generator().manual_seed(seed)
        best = (float("inf"), 0, None)
        train_losses, val_losses = [], []
        for epoch in range(1, recipe.epochs + 1):
            order = torch.randperm(n_train, generator=generator).to(device)
            total_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed without a sync per step
            for start in range(0, n_train, recipe.batch_size):
                index = order[start : start + recipe.batch_size]
                loss = torch.nn.functional.mse_loss(layer(x_train[index]), y_train[index])
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(layer.parameters(), max_norm=recipe.clip)
                optimizer.step()
                scheduler.step()
                total_loss += loss.detach().double() * len(index)
            with torch.no_grad():
                val_loss = float(torch.nn.functional.mse_loss(layer(x_val), y_val))
            train_losses.append(float(total_loss) / n_train)
            val_losses.append(val_loss)
            if val_loss < best[0]:
                state = (layer.weight.detach().T.cpu().clone(), layer.bias.detach().cpu().clone())
                best = (val_loss, epoch, state)
        weight, bias = best[2]
        history = {"train_loss": train_losses, "val_loss": val_losses, "best_epoch": best[1]}
        return cls(weight=weight, bias=bias, history=history)
