"""Config values checked by type: a config may come from a JSON file written by anyone."""

from __future__ import annotations

import typing

from mi_bridge.errors import UserError


def typed(cls: type, values: dict, prefix: str = "") -> dict:
    """Field values of the dataclass ``cls`` with their types checked by hand: numbers coerced to float
    where a float is expected, tuples of floats from lists; else a UserError that names the field as its
    flag does (``prefix``: an option group's, ``kv_`` for ``kv_rank``)."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        hint = hints[name]
        if typing.get_origin(hint) is tuple:
            ok = isinstance(value, tuple | list) and all(_is_number(a) for a in value)
            value = tuple(float(a) for a in value) if ok else value
        elif hint is float:
            ok = _is_number(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool)
        if not ok:
            raise UserError(f"config field {prefix + name!r} has the wrong type: {value!r}")
        out[name] = value
    return out


def listed(value):
    """A value as JSON has it: tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
