"""Turn one `data.sources[i]` dict from params into an adapter's typed options dataclass.

Every mistake is reported with the param path (`data.sources[2].max_per_group`), so a user
can fix params.yaml without reading code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .base import SourceError

T = TypeVar("T")


def build_options(cls: type[T], values: dict[str, Any], param: str) -> T:
    """`cls(**values)` after refusing unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SourceError(
            f"{param}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(fields) or '(none)'}"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SourceError(f"{param}: missing option(s) {', '.join(map(repr, missing))}")
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise SourceError(f"{param}.{key}: expected {_type_name(hints[key])}, got {value!r}")
    return cls(**values)


def describe_options(options: Any) -> str:
    """The options that differ from their defaults, as `key=value` pairs."""
    parts = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()  # type: ignore[misc]
            if f.default_factory is not dataclasses.MISSING
            else dataclasses.MISSING
        )
        if value != default:
            parts.append(f"{f.name}={value}")
    return ", ".join(parts)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__
