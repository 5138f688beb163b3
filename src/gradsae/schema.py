"""Declared schemas for the JSON files other programs or people may have written or edited, checked on load: one
error line naming the file, the field and what was expected, never a traceback further in.

A schema is plain data:

- a type or a tuple of types (``NUM`` is a finite int or float, never a bool; ``INT`` a whole int, never a bool);
- ``{"key": schema, ...}``: an object whose listed keys, when present and not null, match (other keys are free);
- ``Required({...})``: the same, with every listed key present and not null;
- ``[schema]``: a list whose every element matches;
- ``MapOf(schema, nullable=True)``: an object whose every value matches (any keys; null too unless
  ``nullable=False``);
- ``Pair(schema, n=2)``: a list of exactly n elements that match;
- ``Range(low, high)``: a finite number in [low, high];
- ``ANY``: anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import GradsaeError

ANY = object()


class _Num:
    """A finite int or float (not a bool)."""


class _Int:
    """A whole int (not a bool)."""


NUM, INT = _Num, _Int


@dataclass(frozen=True)
class Range:
    """A finite number in [low, high]."""

    low: float
    high: float


@dataclass(frozen=True)
class Required:
    fields: dict


@dataclass(frozen=True)
class MapOf:
    value: Any
    nullable: bool = True
    """False: a null value is refused too."""


@dataclass(frozen=True)
class Pair:
    value: Any
    n: int = 2
    """How many elements (a triple is ``Pair(spec, 3)``)."""


def _describe(spec) -> str:
    if spec is ANY:
        return "anything"
    if spec is NUM:
        return "a finite number"
    if isinstance(spec, Range):
        return f"a number in [{spec.low:g}, {spec.high:g}]"
    if spec is INT:
        return "a whole number"
    if isinstance(spec, tuple):
        return " or ".join(_describe(s) for s in spec)
    if isinstance(spec, type):
        return {str: "text", bool: "true or false", dict: "an object", list: "a list"}.get(spec, spec.__name__)
    if isinstance(spec, (dict, Required, MapOf)):
        return "an object"
    if isinstance(spec, Pair):
        return f"a list of {spec.n} values"
    if isinstance(spec, list):
        return "a list"
    return repr(spec)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _matches_scalar(value, spec) -> bool:
    if spec is ANY:
        return True
    if spec is NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if spec is INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Range):
        return _matches_scalar(value, NUM) and spec.low <= value <= spec.high
    if isinstance(spec, tuple):
        return any(_matches_scalar(value, s) if not _is_container(s) else _container_ok(value, s) for s in spec)
    if isinstance(spec, type):
        return isinstance(value, spec) and not (spec is int and isinstance(value, bool))
    return False


def _is_container(spec) -> bool:
    return isinstance(spec, (dict, list, Required, MapOf, Pair))


def _container_ok(value, spec) -> bool:
    if isinstance(spec, (dict, Required, MapOf)):
        return isinstance(value, dict)
    if isinstance(spec, Pair):
        return isinstance(value, list) and len(value) == spec.n
    return isinstance(value, list)


def check(value, spec, source: str, where: str = "") -> None:
    """Raise one line when ``value`` does not match ``spec`` (``source``: the file, for the message). Only the
    declared structure is walked, so nesting deeper than the schema is a type error at its first level."""
    _check(value, spec, source, where)


def _fail(value, spec, source: str, where: str):
    field = f'"{where}"' if where else "the file"
    raise GradsaeError(
        f"{source}: {field} is {_shown(value)}, expected {_describe(spec)}: the file is damaged or was edited; "
        "rerun the command that wrote it"
    )


def _check(value, spec, source: str, where: str) -> None:
    if spec is ANY:
        return
    if not _is_container(spec) or isinstance(spec, tuple):
        if not _matches_scalar(value, spec):
            _fail(value, spec, source, where)
        return
    if not _container_ok(value, spec):
        _fail(value, spec, source, where)
    if isinstance(spec, Required):
        for key in spec.fields:
            if value.get(key) is None:
                raise GradsaeError(
                    f'{source}: "{_join(where, key)}" is missing: the file is damaged or was edited; rerun the command'
                )
        spec = spec.fields
    if isinstance(spec, dict):
        for key, sub in spec.items():
            if value.get(key) is not None:
                _check(value[key], sub, source, _join(where, key))
    elif isinstance(spec, MapOf):
        for key, v in value.items():
            if v is not None or not spec.nullable:
                _check(v, spec.value, source, _join(where, str(key)))
    elif isinstance(spec, Pair):
        for i, v in enumerate(value):
            if v is not None:
                _check(v, spec.value, source, f"{where}[{i}]")
    else:
        ok = _fast(spec[0])
        for i, v in enumerate(value):
            if ok is None:
                _check(v, spec[0], source, f"{where}[{i}]")
            elif not ok(v):
                _fail(v, spec[0], source, f"{where}[{i}]")


def _fast(spec):
    """A quick test for the elements of long lists of numbers or text (None: check each element in full)."""
    if spec is NUM:
        return lambda v: type(v) in (int, float) and math.isfinite(v)
    if spec is INT:
        return lambda v: type(v) is int
    if spec is str:
        return lambda v: type(v) is str
    return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
