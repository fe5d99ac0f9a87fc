"""The linear bridge: ridge regression in closed form, in normalized space, with fit diagnostics.

Both models' states are standardized per dimension with statistics of the training split. One
eigendecomposition of the standardized sender states' Gram matrix (the SVD's V and s^2) gives the
held-out error of every lambda in closed form; the lambda with the least error on a held-out part of the
training split wins, and the map is then refitted on the whole split. The output is
de-normalized into the receiver's scale, ready for injection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.bridges.base import Bridge, register
from mi_bridge.bridges.metrics import fit_quality, l2_fit_quality, l2_mean

LAMBDA_RATIOS = torch.logspace(-6, 2, 17, dtype=torch.float64)
"""Ridge strengths tried, as multiples of the number of training rows (X^T X scales with n)."""
TENSOR_NAMES = ("weight", "x_mean", "x_std", "y_mean", "y_std")


@dataclass
class Standardizer:
    mean: Float[Tensor, " d"]
    std: Float[Tensor, " d"]

    @classmethod
    def fit(cls, x: Float[Tensor, "n d"]) -> Standardizer:
        return cls(mean=x.mean(0), std=x.std(0).clamp_min(1e-6))

    def __call__(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def invert(self, z: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        return z * self.std.to(z.device) + self.mean.to(z.device)


def ridge_path(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], lambdas: Float[Tensor, " n_lambdas"]
) -> Float[Tensor, "n_lambdas d_in d_out"]:
    """Ridge solutions (X^T X + lambda I)^-1 X^T Y for every lambda from one thin SVD of X (reference form)."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    shrink = s[None, :] / (s[None, :] ** 2 + lambdas[:, None])
    return einops.einsum(vh.T, shrink, uty, "d_in rank, lam rank, rank d_out -> lam d_in d_out")


def heldout_errors(
    x_fit: Float[Tensor, "n d_in"],
    y_fit: Float[Tensor, "n d_out"],
    x_val: Float[Tensor, "m d_in"],
    y_val: Float[Tensor, "m d_out"],
    lambdas: Float[Tensor, " n_lambdas"],
) -> Float[Tensor, " n_lambdas"]:
    """Sum of squared held-out errors of the ridge fit for every lambda, in closed form.

    With X_fit^T X_fit = V diag(e) V^T (one eigendecomposition: the SVD's V and s^2), the prediction
    for x_val is A diag(1 / (e + lambda)) P with A = x_val V and P = V^T X_fit^T Y_fit, so every
    lambda's error needs only r x r products: ||Y||^2 - 2 g.c + g^T (G * H) g.
    """
    big = lambda a, b: (a.float() @ b.float()).double()  # the large products in float32, the rest in float64
    eigenvalues, v = torch.linalg.eigh(big(x_fit.T, x_fit))
    a = big(x_val, v)
    p = v.T @ big(x_fit.T, y_fit)
    gram_a, gram_p = a.T @ a, p @ p.T
    c = ((a.T @ y_val.double()) * p).sum(1)
    g = 1.0 / (eigenvalues.clamp_min(0)[None, :] + lambdas.to(eigenvalues.device)[:, None])
    quadratic = einops.einsum(g, gram_a * gram_p, g, "lam r, r s, lam s -> lam")
    return (y_val.double() ** 2).sum() - 2 * g @ c + quadratic


def ridge_solve(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], ridge_lambda: float
) -> Float[Tensor, "d_in d_out"]:
    """(X^T X + lambda I)^-1 X^T Y by a Cholesky solve (lambda > 0). The Gram matrix is formed in float32
    (fast, and what every fit so far used); where that rounding leaves it not positive-definite, as for
    rank-deficient inputs (keys and values are projections of a narrower residual) under the weakest
    lambda, it is formed again in float64."""
    identity = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    gram = (x.T.float() @ x.float()).double() + ridge_lambda * identity
    try:
        factor = torch.linalg.cholesky(gram)
    except torch.linalg.LinAlgError:
        factor = torch.linalg.cholesky(x.T.double() @ x.double() + ridge_lambda * identity)
    return torch.cholesky_solve((x.T.float() @ y.float()).double(), factor)


def select_lambda(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], *, validation_fraction: float, seed: int
) -> float:
    """The lambda with the least squared error on a held-out part of (x, y)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(n * validation_fraction))
    val, fit = order[:n_val], order[n_val:]
    lambdas = LAMBDA_RATIOS * len(fit)
    errors = heldout_errors(x[fit], y[fit], x[val], y[val], lambdas)
    return float(lambdas[int(errors.argmin())])


@register
@dataclass
class LinearBridge(Bridge):
    """Affine map from sender states to receiver states (ridge in normalized space)."""

    kind: ClassVar[str] = "ridge"

    weight: Float[Tensor, "d_sender d_receiver"]
    x_norm: Standardizer
    y_norm: Standardizer
    ridge_lambda: float
    metadata: dict = field(default_factory=dict)

    @classmethod
    def fit_and_score(cls, x, y, *, n_heldout: int, seed: int, device="cpu") -> tuple[LinearBridge, dict]:
        """Fitted in closed form on the CPU whatever ``device``; scored in every space of ``fit_quality``."""
        bridge = cls.fit(x[:-n_heldout], y[:-n_heldout], seed=seed)
        return bridge, fit_quality(bridge(x[-n_heldout:]), y[-n_heldout:], bridge.y_norm)

    @classmethod
    def fit(
        cls,
        x: Float[Tensor, "n d_sender"],
        y: Float[Tensor, "n d_receiver"],
        *,
        validation_fraction: float = 0.2,
        seed: int = 0,
        metadata: dict | None = None,
    ) -> LinearBridge:
        x, y = (
            x.double().cpu(),
            y.double().cpu(),
        )  # the closed-form fit runs on the CPU (mi_bridge.core.device)
        x_norm, y_norm = Standardizer.fit(x), Standardizer.fit(y)
        xs, ys = x_norm(x), y_norm(y)
        ridge_lambda = select_lambda(xs, ys, validation_fraction=validation_fraction, seed=seed)
        weight = ridge_solve(xs, ys, ridge_lambda)
        as_float = lambda t: t.float()
        return cls(
            weight=as_float(weight),
            x_norm=Standardizer(as_float(x_norm.mean), as_float(x_norm.std)),
            y_norm=Standardizer(as_float(y_norm.mean), as_float(y_norm.std)),
            ridge_lambda=ridge_lambda,
            metadata=dict(metadata or {}),
        )

    def __call__(self, x: Float[Tensor, "n d_sender"]) -> Float[Tensor, "n d_receiver"]:
        return self.y_norm.invert(self.x_norm(x.to(self.weight)) @ self.weight)

    def tensors(self) -> dict[str, Tensor]:
        values = (self.weight, self.x_norm.mean, self.x_norm.std, self.y_norm.mean, self.y_norm.std)
        return dict(zip(TENSOR_NAMES, values, strict=True))

    def numbers(self) -> dict:
        return {"ridge_lambda": self.ridge_lambda}

    @classmethod
    def shapes(cls, d_sender: int, d_receiver: int) -> dict[str, tuple[int, ...]]:
        return {
            "weight": (d_sender, d_receiver),
            "x_mean": (d_sender,),
            "x_std": (d_sender,),
            "y_mean": (d_receiver,),
            "y_std": (d_receiver,),
        }

    @classmethod
    def from_saved(cls, tensors: dict[str, Tensor], numbers: dict, metadata: dict) -> LinearBridge:
        return cls(
            weight=tensors["weight"],
            x_norm=Standardizer(tensors["x_mean"], tensors["x_std"]),
            y_norm=Standardizer(tensors["y_mean"], tensors["y_std"]),
            ridge_lambda=float(numbers["ridge_lambda"]),
            metadata=metadata,
        )


# ---------------------------------------------------------------------------------------------------------
# Held-out fit beside trivial predictors


PREDICTORS = ("bridge", "receiver_mean", "shuffled_pairs")


def reference_predictions(
    bridge: LinearBridge,
    x_fit: Float[Tensor, "n_fit d_sender"],
    y_fit: Float[Tensor, "n_fit d_receiver"],
    x_test: Float[Tensor, "n_test d_sender"],
    *,
    seed: int,
) -> dict[str, Float[Tensor, "n_test d_receiver"]]:
    """Held-out predictions of the bridge and of two trivial predictors (the keys of PREDICTORS).

    ``receiver_mean`` predicts the receiver's training-mean state for every item; ``shuffled_pairs`` is
    a bridge fitted on the same states with the pairing destroyed. Both share whatever anisotropy the
    residual stream has, so the bridge's margin over them is its item-specific content.
    """
    permutation = torch.randperm(x_fit.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    shuffled = LinearBridge.fit(x_fit, y_fit[permutation], seed=seed)
    return {
        "bridge": bridge(x_test),
        "receiver_mean": bridge.y_norm.mean.expand(x_test.shape[0], -1),
        "shuffled_pairs": shuffled(x_test),
    }


def fit_report(
    bridge: LinearBridge,
    x_fit: Float[Tensor, "n_fit d_sender"],
    y_fit: Float[Tensor, "n_fit d_receiver"],
    x_test: Float[Tensor, "n_test d_sender"],
    y_test: Float[Tensor, "n_test d_receiver"],
    *,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Held-out fit quality of the bridge and of the two trivial predictors of
    :func:`reference_predictions`. In L2-normalized space the receiver-mean predictor is the mean of
    the training targets' unit vectors (see :func:`l2_mean`)."""
    predicted = reference_predictions(bridge, x_fit, y_fit, x_test, seed=seed)
    report = {name: fit_quality(p, y_test, bridge.y_norm) for name, p in predicted.items()}
    report["receiver_mean"] |= l2_fit_quality(l2_mean(y_fit).expand(y_test.shape[0], -1), y_test)
    return report
