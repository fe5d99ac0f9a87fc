"""The experiment's configuration: ``ExperimentConfig`` (``experiment``), the registry of protocols and
the options each owns (``options``), the type checks a record passes (``typed``) and the records of
earlier versions (``record``)."""

from mi_bridge.config.experiment import (
    AUTO_DEVICE,
    CHOICES,
    DTYPES,
    FIELD_GROUPS,
    FLOAT16_ON_CPU,
    ExperimentConfig,
    all_options,
    choices_of,
)
from mi_bridge.config.options import (
    PROTOCOLS,
    OptionGroup,
    ProtocolOptions,
    option_specs,
    protocol_options,
    register_protocol,
)
from mi_bridge.config.record import current_record
from mi_bridge.families import TEMPLATES

__all__ = [
    "AUTO_DEVICE",
    "CHOICES",
    "DTYPES",
    "FIELD_GROUPS",
    "FLOAT16_ON_CPU",
    "PROTOCOLS",
    "TEMPLATES",
    "ExperimentConfig",
    "OptionGroup",
    "ProtocolOptions",
    "all_options",
    "choices_of",
    "current_record",
    "option_specs",
    "protocol_options",
    "register_protocol",
]
