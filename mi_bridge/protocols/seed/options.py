"""The seed protocol's own options, checks and defaults (light: read while the config validates)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mi_bridge.config import ExperimentConfig, ProtocolOptions
from mi_bridge.errors import UserError

SEED_LAYER_DEPTH = 0.67
"""The seed paper's relative layer (``layer_rel``): blocks 8 of 12 and 16 of 24 for Pythia-160M/410M."""
PAPER_BRIDGE = "sgd-l2"
"""The seed paper's bridge recipe, the default."""
COMPARED = (PAPER_BRIDGE, "ridge")
"""``--bridge both``: the paper's recipe, then the closed-form one, fitted on the same data (the first
is the primary: its conditions carry the plain names)."""


@dataclass
class Options(ProtocolOptions):
    """``--protocol seed``: the bridge recipe, its fit text and the answers' length."""

    protocol: ClassVar[str] = "mi_bridge.protocols.seed.protocol:SeedProtocol"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"bridge": (*COMPARED, "both")}
    layer_depth: ClassVar[float | None] = SEED_LAYER_DEPTH

    bridge: str | None = None
    """Bridge recipe: ``ridge`` (closed form, standardized space), ``sgd-l2`` (the paper's: a linear layer
    with bias on L2-normalized states, AdamW) or ``both`` (compared on the same data); default ``sgd-l2``."""
    fit_corpus: str | None = None
    """The bridge's fit text, a local file (one text per line) or a Hugging Face dataset
    ``name[:config]`` (needs ``datasets``); default: the eval contexts (offline)."""
    max_new_tokens: int = 64
    """Greedy tokens per answer (the text relay's sender gets twice as many)."""

    @property
    def bridge_kinds(self) -> tuple[str, ...]:
        """The bridge kinds fitted, the primary first."""
        chosen = self.bridge or PAPER_BRIDGE
        return COMPARED if chosen == "both" else (chosen,)

    def resolved(self) -> Options:
        return replace(self, bridge=self.bridge or PAPER_BRIDGE)

    def validate(self, config: ExperimentConfig) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max new tokens must be at least 1 (got {self.max_new_tokens})")
        if config.n_items < 2 or (config.n_fit is not None and config.n_fit < 2):
            raise UserError("too few items: the seed protocol needs n_items >= 2 and n_fit >= 2")
        if not config.family.natural_language:
            raise UserError(
                "the seed protocol needs a pair with a shared natural-language tokenizer: use --pair pythia"
            )
