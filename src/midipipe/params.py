"""Typed views of params.yaml: one dataclass per stage section, with errors that name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ParamError(ValueError):
    """A bad params.yaml entry; the message names the dotted key."""


@dataclass
class DataParams:
    sources: list[dict] = field(default_factory=lambda: [{"kind": "music21", "name": "music21"}])


@dataclass
class OrganizeParams:
    seed: int = 1234  # keys the split hash: change it to draw new splits
    valid_frac: float = 0.1
    test_frac: float = 0.1
    workers: int = 0  # 0 = one per CPU
    timeout_s: float = 60.0


@dataclass
class TokenizeParams:
    workers: int = 0
    timeout_s: float = 60.0
    batch_size: int = 8  # files per pool task
    rows_per_part: int = 1024
    max_notes: int = 1_000_000
    musetok: bool = True
    remi: dict[str, Any] = field(default_factory=dict)  # miditok TokenizerConfig arguments


@dataclass
class ComposersParams:
    min_pieces: int = 10


@dataclass
class TrainParams:
    """Shared training defaults; model sections override them key by key."""

    lr: float = 3e-4
    batch_size: int = 32
    epochs: int = 10
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr: float = 0.0  # the cosine schedule's floor
    grad_clip: float = 1.0
    seed: int = 1234
    device: str = "auto"
    precision: str = "auto"


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    organize: OrganizeParams = field(default_factory=OrganizeParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    composers: ComposersParams = field(default_factory=ComposersParams)
    train: TrainParams = field(default_factory=TrainParams)


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ParamError(f"{key}: expected a {origin.__name__}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ParamError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls: type, raw: dict | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def load(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml; sections other stages own are kept out of this view."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(Params)}
    return build(Params, {k: v for k, v in raw.items() if k in known})


def section(path: str | Path, name: str) -> dict:
    """A raw section, for stages whose params are defined next to their module."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return raw.get(name) or {}


def merged_train(params: Params, overrides: dict | None) -> TrainParams:
    """`train` defaults with a model section's overrides on top."""
    base = dataclasses.asdict(params.train)
    base.update({k: v for k, v in (overrides or {}).items() if k in base})
    return build(TrainParams, base, "train")
