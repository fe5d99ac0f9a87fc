"""How well a bridge's predictions fit the receiver's states: the metrics every bridge kind is scored
with (pure functions on tensors; no kind of bridge is imported here)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

EPS = 1e-12


@runtime_checkable
class Reference(Protocol):
    """The receiver's training-split statistics (``bridges.ridge.Standardizer``): ``mean`` and ``(x - mean)
    / std`` as a call."""

    mean: Tensor

    def __call__(self, x: Tensor) -> Tensor: ...


def mean_cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> float:
    """Mean over rows of cos(a_i, b_i); a zero row counts as cosine 0."""
    dot = (a * b).sum(-1)
    return float((dot / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)).mean())


def unit(x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
    """Rows scaled to norm 1 (a zero row stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def r2_score(predicted: Float[Tensor, "n d"], true: Float[Tensor, "n d"]) -> float:
    """1 - residual / total sum of squares (variance-weighted over dimensions)."""
    residual = ((true - predicted) ** 2).sum()
    total = ((true - true.mean(0)) ** 2).sum().clamp_min(EPS)
    return float(1 - residual / total)


def l2_fit_quality(predicted_l2: Float[Tensor, "n d"], true: Float[Tensor, "n d"]) -> dict[str, float]:
    """The seed paper's fit metric: cosine and R^2 against the L2-normalized targets ŷ = y / ‖y‖.

    ``predicted_l2`` is a prediction in that space (the paper's bridge output W x̂ + b as it is, or a
    raw-space prediction put on the unit sphere). Cosine is scale-free, so ``l2_cosine`` equals the raw
    cosine of the same prediction; R^2 is not, and in this space it is measured against the spread of
    the unit vectors, which anisotropy makes small."""
    predicted_l2, target = predicted_l2.double(), unit(true.double())
    return {"l2_cosine": mean_cosine(predicted_l2, target), "l2_r2": r2_score(predicted_l2, target)}


def fit_quality(
    predicted: Float[Tensor, "n d"], true: Float[Tensor, "n d"], reference: Reference
) -> dict[str, float]:
    """Normalized, raw and centered cosine, and R^2 (variance-weighted) of predictions on held-out rows,
    and the paper's cosine and R^2 in L2-normalized space (the prediction put on the unit sphere).

    ``reference`` holds the receiver's training-split statistics: normalized cosine compares
    standardized vectors, centered cosine compares vectors minus the training mean.
    """
    predicted, true = predicted.double().cpu(), true.double().cpu()
    mean = reference.mean.double().cpu()
    return {
        "normalized_cosine": mean_cosine(reference(predicted), reference(true)),
        "raw_cosine": mean_cosine(predicted, true),
        "centered_cosine": mean_cosine(predicted - mean, true - mean),
        "r2": r2_score(predicted, true),
        **l2_fit_quality(unit(predicted), true),
    }


def l2_mean(y: Float[Tensor, "n d"]) -> Float[Tensor, " d"]:
    """The receiver-mean predictor in L2-normalized space: the mean of the unit vectors (its direction is
    the shared anisotropy; its length, below 1, is the constant that minimizes the squared error)."""
    return unit(y.double()).mean(0)
