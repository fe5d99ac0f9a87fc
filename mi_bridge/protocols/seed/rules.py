"""The seed protocol's own checks and defaults on a config (light: read while the config validates)."""

from __future__ import annotations

from mi_bridge.config import ExperimentConfig, ProtocolRules
from mi_bridge.errors import UserError

SEED_LAYER_DEPTH = 0.67
"""The seed paper's relative layer (``layer_rel``): blocks 8 of 12 and 16 of 24 for Pythia-160M/410M."""


class SeedRules(ProtocolRules):
    protocol = "mi_bridge.protocols.seed.protocol:SeedProtocol"
    default_bridge = "sgd-l2"
    layer_depth = SEED_LAYER_DEPTH

    def validate(self, config: ExperimentConfig) -> None:
        if config.n_items < 2 or (config.n_fit is not None and config.n_fit < 2):
            raise UserError("too few items: the seed protocol needs n_items >= 2 and n_fit >= 2")
        if not config.family.natural_language:
            raise UserError(
                "the seed protocol needs a pair with a shared natural-language tokenizer: use --pair pythia"
            )
        if config.conditions != "all":
            raise UserError("--conditions applies to the split protocol (the seed protocol's are fixed)")


RULES = SeedRules()
