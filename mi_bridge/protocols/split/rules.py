"""The split protocol's own checks and defaults on a config (light: read while the config validates)."""

from __future__ import annotations

from mi_bridge.config import ExperimentConfig, ProtocolRules
from mi_bridge.errors import UserError


class SplitRules(ProtocolRules):
    protocol = "mi_bridge.protocols.split.protocol:SplitProtocol"

    def validate(self, config: ExperimentConfig) -> None:
        if config.fit_items < 8 or config.n_test < 8:
            raise UserError(
                f"too few items: n_items={config.n_items}, n_fit={config.n_fit} give {config.fit_items} fit "
                f"and {config.n_test} test items; each needs at least 8"
            )
        if config.bridge not in (None, "ridge"):
            raise UserError(f"--bridge {config.bridge} applies to --protocol seed only (split uses ridge)")

    def one_tokenizer_reason(self, config: ExperimentConfig) -> str | None:
        if config.target == "same-input":
            return "--target same-input pairs their states token by token (use --target relay-slot)"
        return None


RULES = SplitRules()
