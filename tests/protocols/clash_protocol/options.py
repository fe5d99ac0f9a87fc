"""A protocol whose option is named like a shared field: refused when the options are gathered."""

from dataclasses import dataclass
from typing import ClassVar

from mi_bridge.config import ProtocolOptions


@dataclass
class Options(ProtocolOptions):
    protocol: ClassVar[str] = "tests.protocols.clash_protocol.protocol:Nothing"

    k: int = 3
    """Clashes with the shared ``k``."""
