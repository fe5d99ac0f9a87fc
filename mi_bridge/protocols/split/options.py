"""The split protocol's own options, checks and defaults (light: read while the config validates)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

from mi_bridge.config import ExperimentConfig, ProtocolOptions
from mi_bridge.core.conditions import CONDITION_FAMILIES, INJECTION_MODES
from mi_bridge.errors import UserError

POSITIONS = ("slot", "final")
TARGETS = ("relay-slot", "same-input")


@dataclass
class Options(ProtocolOptions):
    """``--protocol split``: where the translated state enters, what the bridge is fitted to, how
    strongly it is added and which conditions and site diagnoses run."""

    protocol: ClassVar[str] = "mi_bridge.protocols.split.protocol:SplitProtocol"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"position": POSITIONS, "target": TARGETS}
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
    kv_channel: bool = False
    """Also run the second channel (docs/kv_channel.md): the sender's key-value cache of its prompt, mapped
    and fused into a prefix of the receiver's, against a learned prefix and every control, at each site.
    Trains per seed (about 20 CPU minutes on SmolLM2 at 400 items)."""
    kv_layer_map: str = "last-aligned"
    """KV channel: which sender layer feeds each receiver layer: last-aligned (C2C's), identity or
    shift:K (receiver layer j reads sender layer j+K, clamped)."""
    kv_rank: int = 8
    """KV channel: the rank of the fuser's trained correction."""
    kv_epochs: int = 30
    """KV channel: the most training epochs of the fuser and of the learned prefix."""
    kv_lr: float = 3e-3
    """KV channel: AdamW learning rate."""
    kv_train_batch: int = 16
    """KV channel: items per training step."""
    kv_patience: int = 3
    """KV channel: epochs without a better held-out loss before training stops."""

    def __post_init__(self) -> None:
        if not self.alphas or not all(math.isfinite(a) and a > 0 for a in self.alphas):
            raise UserError(f"alphas must be one or more finite positive numbers (got {self.alphas})")
        self.conditions = normalize_conditions(self.conditions)
        for name in ("kv_rank", "kv_epochs", "kv_lr", "kv_train_batch", "kv_patience"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be positive (got {value})")
        from mi_bridge.bridges.layer_map import LayerMap  # light: no TransformerLens

        try:
            self.kv_layer_map = str(LayerMap.parse(self.kv_layer_map))
        except UserError as err:
            raise UserError(f"--kv-layer-map: {err}") from None

    def to_dict(self) -> dict:
        """The flat record; the KV channel's fields only where one of them differs from its default, so
        that runs without it keep the record, and so the folder name, they had before it existed."""
        data = self.every_field()
        if all(data[name] == KV_DEFAULTS[name] for name in KV_DEFAULTS):
            data = {k: v for k, v in data.items() if k not in KV_DEFAULTS}
        return data

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

    def check_run(self) -> None:
        if self.kv_channel:
            return
        changed = [name for name, default in KV_DEFAULTS.items() if getattr(self, name) != default]
        if changed:
            flag = "--" + changed[0].replace("_", "-")
            raise UserError(
                f"{flag} applies to the KV channel: add --kv-channel (or run the kv_channel analysis)"
            )

    def one_tokenizer_reason(self, config: ExperimentConfig) -> str | None:
        if self.target == "same-input":
            return "--target same-input pairs their states token by token (use --target relay-slot)"
        if self.kv_channel:
            return (
                "--kv-channel maps the sender's cache of P onto the receiver's cache of the same tokens (two "
                "tokenizers would need C2C's token alignment, which is not built)"
            )
        return None


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


KV_DEFAULTS = {spec.name: spec.default for spec in fields(Options) if spec.name.startswith("kv_")}
"""The KV channel's fields with their defaults (``Options.to_dict``)."""
