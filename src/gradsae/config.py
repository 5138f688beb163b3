"""One config dataclass per command drives the CLI, the saved config.json and the docs.

Declare fields with ``opt(default, "help text")``; ``add_dataclass_args`` turns them into argparse flags
(``--field-name``), ``from_args`` builds the dataclass back, and ``asdict`` is what results folders save.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import MISSING, field
from typing import Any

from .errors import GradsaeError


def opt(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    short: str | None = None,
    positional: bool = False,
    low: float | None = None,
    high: float | None = None,
    auto: bool = False,
):
    """A config field with its help text (and optionally choices / a short flag / positional, and the range
    ``[low, high]`` every value must lie in: ``check_values`` enforces it, and refuses NaN/Inf everywhere).
    ``auto``: an integer option that also takes the word ``auto``, stored as 0 (``--batch-size auto``)."""
    meta = {
        "help": help,
        "choices": choices,
        "short": short,
        "positional": positional,
        "low": low,
        "high": high,
        "auto": auto,
    }
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def _type_schema(tp):
    """The ``schema`` spec of one field type: str/int/float/bool, lists of them, optional ones; else anything."""
    from . import schema

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_schema(args[0]) if len(args) == 1 else schema.ANY  # null is always allowed
    if origin in (list, tuple):
        inner = typing.get_args(tp)[:1]
        return [_type_schema(inner[0])] if inner else list
    return {str: str, bool: bool, int: schema.INT, float: schema.NUM}.get(tp, schema.ANY)


def config_schema(cls) -> dict:
    """The ``schema`` of a saved ``asdict(cls)`` (a results folder's config.json), from the field types: each
    field, when present and not null, has its declared type."""
    return {name: _type_schema(tp) for name, tp in typing.get_type_hints(cls).items()}


def check_values(cfg) -> None:
    """One line for the first value of ``cfg`` that is NaN/Inf or outside its field's declared range (a list
    field's every element is checked)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        lo, hi = f.metadata.get("low"), f.metadata.get("high")
        for x in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            if not math.isfinite(x):
                raise GradsaeError(f"{flag} {x}: give a finite number")
            if lo is not None and x < lo:
                raise GradsaeError(f"{flag} {x}: must be at least {lo:g}")
            if hi is not None and x > hi:
                raise GradsaeError(f"{flag} {x}: must be at most {hi:g}")


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp = _base_type(hints[f.name])
        origin = typing.get_origin(tp)
        kw: dict[str, Any] = {"help": meta.get("help", "")}
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if f.default is not MISSING:
            kw["default"] = f.default
            if kw["help"] is not None:
                kw["help"] += f" (default: {f.default})" if f.default not in (None, "") else ""
        elif f.default_factory is not MISSING:
            kw["default"] = f.default_factory()
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            (inner,) = typing.get_args(tp)[:1] or (str,)
            kw["type"] = _list_parser(inner)
        elif meta.get("auto"):
            kw["type"] = _int_or_auto
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        if meta.get("positional"):
            kw.pop("default", None) if f.default is MISSING else None
            if f.default is not MISSING:
                kw["nargs"] = "?"
            parser.add_argument(f.name, **kw)
        else:
            flags = [f"--{f.name.replace('_', '-')}"] + ([meta["short"]] if meta.get("short") else [])
            if f.default is MISSING and f.default_factory is MISSING:
                kw["required"] = True
            parser.add_argument(*flags, dest=f.name, **kw)


def _int_or_auto(s: str) -> int:
    """``auto`` -> 0, else an integer (argparse reports anything else as an invalid value)."""
    return 0 if str(s).strip().lower() == "auto" else int(s)


_int_or_auto.__name__ = "integer or 'auto'"


def _list_parser(inner):
    def parse(s: str):
        if isinstance(s, list):
            return s
        parts = [p.strip() for p in str(s).split(",") if p.strip()]
        out = []
        for p in parts:
            if inner is int:
                out.append(int(p))
            elif inner is float:
                out.append(float(p))
            else:
                out.append(p)
        return out

    parse.__name__ = f"comma-separated {getattr(inner, '__name__', 'str')} list"
    return parse


def from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def describe(cls) -> str:
    """A Markdown table of a config's fields (used for the docs). Paths inside the installed package are
    shown as ``<gradsae>/...`` so the table does not depend on where the package lives."""
    from pathlib import Path

    pkg = str(Path(__file__).resolve().parent)
    hints = typing.get_type_hints(cls)
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else "required")
        )
        default = str(default).replace(pkg, "<gradsae>")
        tp = getattr(_base_type(hints[f.name]), "__name__", str(hints[f.name]))
        name = f"`{f.name}` (positional)" if f.metadata.get("positional") else f"`--{f.name.replace('_', '-')}`"
        help_ = f.metadata.get("help", "").replace("%%", "%").replace("|", "\\|")
        lo, hi = f.metadata.get("low"), f.metadata.get("high")
        if lo is not None or hi is not None:
            help_ += (
                " (" + ", ".join(s for s in (lo is not None and f"≥ {lo:g}", hi is not None and f"≤ {hi:g}") if s) + ")"
            )
        rows.append(f"| {name} | {tp} | `{default}` | {help_} |")
    return "\n".join(rows)
