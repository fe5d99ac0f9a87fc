"""Run folders' config.json of earlier versions, read in the current layout: the one place that knows
what an earlier record held."""

from __future__ import annotations

from mi_bridge.config.experiment import option_owners, protocol_of
from mi_bridge.config.options import ProtocolOptions, group_fields, protocol_options
from mi_bridge.config.typed import listed


def current_record(data: dict) -> tuple[dict, list[str]]:
    """A recorded config.json, of this version or an earlier one, in the current layout, and the keys
    dropped from it whose value mattered. Before protocols owned their options a record carried every
    protocol's fields (and the split protocol's bridge kind): the keys that another protocol owns, and
    the protocol's ``legacy`` keys, are dropped; those that held a value other than their default are
    returned, so that the caller can say so. Before option groups, a record held a group's options flat
    by their flags' names (``kv_rank``): they move into the group's object (``kv``)."""
    protocol = protocol_of(data)
    own, owners = protocol_options(protocol), option_owners()
    kept, dropped = {}, []
    for key, value in data.items():
        owner = None if owners.get(key) == protocol else owners.get(key)
        if key in own.legacy and value == own.legacy[key]:
            continue
        if owner is None:
            kept[key] = value
        elif not _is_default(protocol_options(owner), key, value):
            dropped.append(key)
    record = own.nested(kept)
    for name, group in group_fields(own).items():  # fields added to a group since the record was written
        held = record.get(name)
        if isinstance(held, dict) and group.recorded_before and not set(group.recorded_before) & set(held):
            record[name] = {**group.recorded_before, **held}
    return record, dropped


def _is_default(cls: type[ProtocolOptions], key: str, value) -> bool:
    """Whether ``value`` is the default of the option ``key`` names, by flag or by field (a group's
    object: every field of it at its default)."""
    default = cls.from_dict({})
    if isinstance(value, dict):
        return cls.flat({key: value}).items() <= default.flags().items()
    return listed(value) == default.flags()[key]
