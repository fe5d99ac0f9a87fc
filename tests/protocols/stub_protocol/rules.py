"""A third protocol, as a user would add one: its rules (checks and defaults) ..."""

from mi_bridge.config import ProtocolRules
from mi_bridge.errors import UserError


class StubRules(ProtocolRules):
    protocol = "tests.protocols.stub_protocol.protocol:StubProtocol"

    def validate(self, config) -> None:
        if config.k > 6:
            raise UserError("the stub protocol reads at most 6 candidates")


RULES = StubRules()
