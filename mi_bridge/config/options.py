"""The registry of protocols, and the options a protocol owns: ``ProtocolOptions`` (its fields) and
``OptionGroup`` (options that belong together, such as the split protocol's KV channel)."""

from __future__ import annotations

import importlib
import typing
from dataclasses import Field, asdict, dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from mi_bridge.config.typed import listed, typed
from mi_bridge.errors import UserError

if TYPE_CHECKING:
    from mi_bridge.config.experiment import ExperimentConfig

PROTOCOLS: dict[str, str] = {"split": "mi_bridge.protocols.split", "seed": "mi_bridge.protocols.seed"}
"""The one registry of protocols: each name's package. Its ``options.Options`` (a ``ProtocolOptions``,
light: no TransformerLens) holds the protocol's own fields, checks them and names the ``Protocol`` that
runs it, imported only when asked for. A new protocol is its package and one ``register_protocol`` call;
nothing here branches on a protocol's name."""


def register_protocol(name: str, package: str) -> None:
    """Make the protocol in ``package`` (with ``options.py``) runnable as ``--protocol name``."""
    PROTOCOLS[name] = package


@dataclass
class OptionGroup:
    """Options that belong together, held by one field of a protocol's options (the split protocol's
    ``kv``: the KV channel). Each of its fields is a flag named after both (``--kv-rank``) and a key of
    one object in config.json (``"kv": {"rank": 8}``), which is left out while every field holds its
    default: records written before the group existed stay as they were. Checks go in
    ``__post_init__`` (no I/O)."""

    recorded_before: ClassVar[dict[str, object]] = {}
    """Fields added together after the group, with the value that a record written without any of them
    ran with (where it is not the new default): ``config.record`` fills them in for a recorded object
    that holds none of them (a record written since holds them all), so that an old run replays as
    close to how it ran as today's code allows."""

    def check_run(self) -> None:
        """Raise ``UserError`` for options that ``python -m mi_bridge.run`` would ignore."""

    def one_tokenizer_reason(self) -> str | None:
        """Why these options need sender and receiver to share one tokenizer (None: they do not)."""
        return None


@dataclass
class ProtocolOptions:
    """A protocol's own options, as a dataclass whose fields (each with a docstring under it) become
    ``config.options``, the flags of a ``--help`` group and keys of config.json (an ``OptionGroup``
    field: a flag per field of the group, one object in config.json)."""

    protocol: ClassVar[str]
    """The ``Protocol`` class that runs it, as ``module:class``."""
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    """The allowed values of its fields that take one of a few names."""
    grid_fields: ClassVar[tuple[str, ...]] = ()
    """Its fields that a sweep may vary (they name the sweep's cells)."""
    legacy: ClassVar[dict[str, object]] = {}
    """Keys that run folders written before protocols owned their options carried for this protocol,
    with the value they held: dropped when such a config.json is read."""
    layer_depth: ClassVar[float | None] = None
    """The default layers' relative depth (None: ``models.default_layer``'s rule)."""

    def validate(self, config: ExperimentConfig) -> None:
        """Raise ``UserError`` for what this protocol cannot run (called after the shared checks)."""

    def check_run(self) -> None:
        """Raise ``UserError`` for options that ``python -m mi_bridge.run`` would ignore."""
        for group in self.groups():
            group.check_run()

    def one_tokenizer_reason(self, config: ExperimentConfig) -> str | None:
        """Why this run needs sender and receiver to share one tokenizer (None: it does not)."""
        return next(filter(None, (group.one_tokenizer_reason() for group in self.groups())), None)

    def resolved(self) -> ProtocolOptions:
        """These options with every default made explicit (what a run folder's config.json records)."""
        return self

    def groups(self) -> list[OptionGroup]:
        return [getattr(self, name) for name in group_fields(type(self))]

    def to_dict(self) -> dict:
        """The record in config.json: every field (tuples as lists, as JSON has them), an option group as
        one object, left out while it holds its defaults."""
        data = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not isinstance(value, OptionGroup):
                data[spec.name] = listed(value)
            elif value != spec.default_factory():
                data[spec.name] = {k: listed(v) for k, v in asdict(value).items()}
        return data

    def flags(self) -> dict:
        """Every option by its flag's name (``kv_rank`` for the ``kv`` group's ``rank``), tuples as lists."""
        return type(self).flat({k: listed(v) for k, v in asdict(self).items()})

    @classmethod
    def nested(cls, data: dict) -> dict:
        """``data`` in the record's layout: an option group's values given by their flags' names (flags,
        API keywords, config.json written before the group existed: ``kv_rank``) moved into the group's
        object, over the values the object holds; every other key as it is."""
        names, out = flag_paths(cls), {}
        for key, value in data.items():
            if len(names.get(key, ())) == 2:
                group, name = names[key]
                held = out.get(group)
                out[group] = {**(held if isinstance(held, dict) else {}), name: value}
            elif key in out and isinstance(value, dict):  # the object after flags for it: they win
                out[key] = {**value, **out[key]}
            else:
                out[key] = value
        return out

    @classmethod
    def flat(cls, data: dict) -> dict:
        """The inverse of ``nested``: each option group's object spread into its flags' names."""
        out = {}
        for key, value in data.items():
            if key in group_fields(cls) and isinstance(value, dict):
                out |= {f"{key}_{name}": v for name, v in value.items()}
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ProtocolOptions:
        """The options ``data`` names, by field or by flag (``ProtocolOptions.nested``)."""
        data, groups = cls.nested(data), group_fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        for name, group in groups.items():
            if name in data and isinstance(data[name], dict):
                unknown += sorted(f"{name}_{k}" for k in set(data[name]) - {f.name for f in fields(group)})
        if unknown:
            raise UserError(f"unknown options of this protocol: {', '.join(unknown)}")
        for name, value in data.items():
            allowed = cls.choices.get(name)
            if allowed is not None and value is not None and value not in allowed:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")
        values = {
            k: groups[k](**typed(groups[k], v, prefix=f"{k}_")) if k in groups and isinstance(v, dict) else v
            for k, v in data.items()
        }
        return cls(**typed(cls, values))


def group_fields(cls: type[ProtocolOptions]) -> dict[str, type[OptionGroup]]:
    """The fields of ``cls`` that hold an option group, with the group's class."""
    hints = typing.get_type_hints(cls)
    return {
        spec.name: hints[spec.name]
        for spec in fields(cls)
        if isinstance(hints[spec.name], type) and issubclass(hints[spec.name], OptionGroup)
    }


def option_specs(cls: type[ProtocolOptions]) -> list[tuple[str, type, Field, tuple[str, ...]]]:
    """Every option of ``cls`` as a flag: its name (``kv_rank``), the dataclass that declares it (for its
    docstring and type), its field, and where its value lives: ``(field,)`` or ``(group, field)``."""
    groups = group_fields(cls)
    specs = []
    for spec in fields(cls):
        if spec.name in groups:
            group = groups[spec.name]
            specs += [(f"{spec.name}_{g.name}", group, g, (spec.name, g.name)) for g in fields(group)]
        else:
            specs.append((spec.name, cls, spec, (spec.name,)))
    return specs


def flag_paths(cls: type[ProtocolOptions]) -> dict[str, tuple[str, ...]]:
    """Each flag's name with where its value lives (``option_specs``)."""
    return {name: path for name, _, _, path in option_specs(cls)}


def protocol_options(name: str) -> type[ProtocolOptions]:
    """The options class of the protocol registered as ``name``."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return importlib.import_module(f"{PROTOCOLS[name]}.options").Options
