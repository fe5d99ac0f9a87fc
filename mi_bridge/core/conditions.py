"""Conditions as values: a prompt, optionally with a vector injected at the site in one mode; the
standard set of the split protocol, and its named families (``--conditions``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

CONDITION_FAMILIES = ("translated", "controls", "ceilings")
"""Families of injected conditions (the split protocol's ``--conditions`` picks among them): the bridge's
output, the controls (random, shuffled, mean) and the receiver's own states (self-patch and the
context-free ceilings); their vector kinds are ``FAMILIES`` below."""
INJECTION_MODES = ("add", "replace", "rescale", "rescale-add")
"""The injection modes (``core/inject.py``)."""

VECTOR_KINDS = (
    "translated",
    "random",
    "shuffled",
    "mean",
    "self-patch",
    "counterfactual self-patch",
    "context-free self-patch",
)
"""What is injected: the bridge's output, and the controls (docs/DESIGN.md). The last two are the
ceilings for anything the sender could send: the receiver's own state with the answers permuted in its
context (does the site carry the answer?), and its own state for B read against another item's facts
(B without this item's answer)."""

FAMILIES = {
    "translated": ("translated",),
    "controls": ("random", "shuffled", "mean"),
    "ceilings": ("self-patch", "counterfactual self-patch", "context-free self-patch"),
}
"""The vector kinds of each family that ``--conditions`` names (``CONDITION_FAMILIES``)."""


@dataclass(frozen=True)
class Condition:
    """A prompt, optionally with a vector injected at the site in one mode."""

    name: str
    prompt: str = "placeholder"
    vector: str | None = None
    mode: str | None = None
    alpha: float | None = None

    @property
    def is_injection(self) -> bool:
        return self.vector is not None


BASELINE = Condition("baseline")


def standard_conditions(
    alphas: Sequence[float], vector_kinds: Sequence[str] = VECTOR_KINDS
) -> list[Condition]:
    """Baseline, text relay, oracle, then every vector kind in every mode (additive ones per alpha)."""
    conditions = [BASELINE, Condition("text relay", prompt="relay"), Condition("oracle", prompt="oracle")]
    for kind in vector_kinds:
        conditions += [Condition(f"{kind} add a={a:g}", vector=kind, mode="add", alpha=a) for a in alphas]
        conditions.append(Condition(f"{kind} replace", vector=kind, mode="replace"))
        conditions.append(Condition(f"{kind} rescale", vector=kind, mode="rescale"))
        conditions += [
            Condition(f"{kind} rescale-add a={a:g}", vector=kind, mode="rescale-add", alpha=a) for a in alphas
        ]
    return conditions


def select_conditions(
    conditions: Sequence[Condition],
    families: Collection[str] = CONDITION_FAMILIES,
    modes: Collection[str] = INJECTION_MODES,
    keep: Collection[str] = (),
) -> list[Condition]:
    """The conditions of the chosen families in the chosen modes, in their order; conditions without an
    injection (baseline, relay, oracle) and those named in ``keep`` (what a report reads) always stay.
    Every family and mode chosen: ``conditions`` unchanged."""
    kinds = {kind for family in families for kind in FAMILIES[family]}
    return [
        c
        for c in conditions
        if not c.is_injection or c.name in keep or (c.vector in kinds and c.mode in modes)
    ]
