"""A third protocol, as a user would add one: its options (fields, checks and defaults) ..."""

from dataclasses import dataclass
from typing import ClassVar

from mi_bridge.config import ProtocolOptions
from mi_bridge.errors import UserError


@dataclass
class Options(ProtocolOptions):
    protocol: ClassVar[str] = "tests.protocols.stub_protocol.protocol:StubProtocol"

    candidates_cap: int = 6
    """The most candidates (k) the stub reads."""

    def validate(self, config) -> None:
        if config.k > self.candidates_cap:
            raise UserError(f"the stub protocol reads at most {self.candidates_cap} candidates")
