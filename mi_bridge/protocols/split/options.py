"""The split protocol's own options, checks and defaults (light: read while the config validates)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from mi_bridge.bridges.kv_options import KV_LOSSES, KV_SOURCES, KVOptions
from mi_bridge.config import ExperimentConfig, ProtocolOptions
from mi_bridge.core.conditions import CONDITION_FAMILIES, INJECTION_MODES
from mi_bridge.errors import UserError

POSITIONS = ("slot", "final")
TARGETS = ("relay-slot", "same-input")


@dataclass
class Options(ProtocolOptions):
    """``--protocol split``: where the translated state enters, what the bridge is fitted to, how
    strongly it is added, which conditions run and which optional sections (``sections``)."""

    protocol: ClassVar[str] = "mi_bridge.protocols.split.protocol:SplitProtocol"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "position": POSITIONS,
        "target": TARGETS,
        "kv_source": KV_SOURCES,  # flags of the kv group: --help lists them, KVOptions checks them
        "kv_loss": KV_LOSSES,
    }
    grid_fields: ClassVar[tuple[str, ...]] = ("position", "target")
    legacy: ClassVar[dict[str, object]] = {"bridge": "ridge"}
    """Flat configs of old recorded the split protocol's bridge kind, which is always ridge."""

    position: str = "slot"
    """Injection site: ``slot`` (the bridge entity's slot) or ``final`` (the last token, as in AC)."""
    target: str = "relay-slot"
    """Bridge target: the receiver's oracle-run state at the site, or states on the same input."""
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    """Strengths of the additive injections (h + alpha * v), low first."""
    conditions: str = "all"
    """The injected conditions to evaluate, families (translated, controls, ceilings) and/or modes (add,
    replace, rescale, rescale-add), e.g. ``translated,controls,rescale``; translated is required, and
    baseline, relay, oracle and the site diagnosis's conditions are always kept."""
    site_scan: bool = True
    """Diagnose every receiver layer (self-patch, context-free ceiling, follow rate), so that the verdict
    can name the layers where a sender-derived vector could help."""
    second_site: bool = True
    """When the receiver layer is not pre-lookup and the site scan found a pre-lookup layer, also evaluate
    the translated conditions and controls at the pre-lookup layer nearest it (ties: the larger
    context-free ceiling), reported side by side with the requested site."""
    kv: KVOptions = field(default_factory=KVOptions)
    """The KV channel's options (``bridges.kv_options``): flags ``--kv-channel``, ``--kv-rank``, ...;
    config.json's ``kv`` object, left out while they hold their defaults (runs without the channel keep
    the record, and so the folder name, they had before it existed)."""

    def __post_init__(self) -> None:
        if not self.alphas or not all(math.isfinite(a) and a > 0 for a in self.alphas):
            raise UserError(f"alphas must be one or more finite positive numbers (got {self.alphas})")
        self.conditions = normalize_conditions(self.conditions)

    @property
    def condition_families(self) -> tuple[str, ...]:
        return _conditions(self.conditions)[0]

    @property
    def condition_modes(self) -> tuple[str, ...]:
        return _conditions(self.conditions)[1]

    def validate(self, config: ExperimentConfig) -> None:
        if config.fit_items < 8 or config.n_test < 8:
            raise UserError(
                f"too few items: n_items={config.n_items}, n_fit={config.n_fit} give {config.fit_items} fit "
                f"and {config.n_test} test items; each needs at least 8"
            )

    def one_tokenizer_reason(self, config: ExperimentConfig) -> str | None:
        if self.target == "same-input":
            return "--target same-input pairs their states token by token (use --target relay-slot)"
        return super().one_tokenizer_reason(config)


def _conditions(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The families and modes a ``conditions`` text names (none of one kind: all of it)."""
    names = [name.strip() for name in text.split(",")]
    if names == ["all"]:
        return CONDITION_FAMILIES, INJECTION_MODES
    unknown = [n for n in names if n not in CONDITION_FAMILIES + INJECTION_MODES]
    if unknown:
        raise UserError(
            f"unknown condition family or mode {unknown[0]!r}; choose from all, "
            f"{', '.join(CONDITION_FAMILIES + INJECTION_MODES)}"
        )
    families = tuple(f for f in CONDITION_FAMILIES if f in names) or CONDITION_FAMILIES
    modes = tuple(m for m in INJECTION_MODES if m in names) or INJECTION_MODES
    if "translated" not in families:
        raise UserError("--conditions must include translated: the verdict reads the translated conditions")
    return families, modes


def normalize_conditions(text: str) -> str:
    """One spelling per selection (canonical order, ``all`` for everything), so that equal selections
    give equal configs and run folder names."""
    families, modes = _conditions(text)
    if (families, modes) == (CONDITION_FAMILIES, INJECTION_MODES):
        return "all"
    return ",".join(
        [
            *(f for f in families if families != CONDITION_FAMILIES),
            *(m for m in modes if modes != INJECTION_MODES),
        ]
    )
