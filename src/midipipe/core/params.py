"""Typed views of params.yaml: one dataclass per stage section, with errors that name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from midipipe.core.errors import ParamError


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
    rows_per_file: int = 4096  # pieces per corpus shard: a few hundred files for millions
    rows_per_group: int = 64  # pieces per Parquet row group: the unit of a random read


@dataclass
class TokenizeParams:
    workers: int = 0
    timeout_s: float = 60.0
    batch_size: int = 32  # files per pool task
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

    lr: float = 1e-3  # the base: a model section scales it (`lr_scale`) or sets its own
    batch_size: int = 32
    epochs: int = 10
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr: float = 0.0  # the cosine schedule's floor
    grad_clip: float = 1.0
    seed: int = 1234
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 0  # steps between checkpoints (0 = at each epoch's end only)
    loader_workers: int = 0  # DataLoader processes reading token shards (0 = the trainer's)

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ParamError(
                f"train.checkpoint_every: must be >= 0 (0 = per epoch only), "
                f"got {self.checkpoint_every!r}"
            )


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    organize: OrganizeParams = field(default_factory=OrganizeParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    composers: ComposersParams = field(default_factory=ComposersParams)
    train: TrainParams = field(default_factory=TrainParams)


def matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint (Union, Literal, list[...], dict, scalars)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(matches(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def build(cls: type, raw: dict | None, prefix: str = "", error: type[Exception] = ParamError):
    """Build dataclass `cls` from a mapping (nested dataclasses too), refusing unknown keys,
    missing required keys and wrong types with `error`, whose message names the dotted key."""
    raw = {} if raw is None else raw
    where = prefix or "params"
    if not isinstance(raw, dict):
        raise error(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise error(
            f"{where}.{unknown[0]}: unknown key {unknown[0]!r} "
            f"(known: {', '.join(fields) or 'none'})"
        )
    missing = [
        n
        for n, f in fields.items()
        if n not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise error(f"{where}.{missing[0]}: required")
    kwargs = {}
    for key, value in raw.items():
        hint, dotted = hints[key], f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(hint):
            value = build(hint, value, dotted, error)
        elif not matches(value, hint):
            raise error(f"{dotted}: expected {type_name(hint)}, got {value!r}")
        elif hint is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def require(obj: Any, section: str, checks: list[tuple[bool, str, str]]) -> None:
    """Raise on the first failed `(ok, key, what it must be)`, naming `section.key`."""
    for ok, key, want in checks:
        if not ok:
            raise ParamError(f"{section}.{key}: must be {want}, got {getattr(obj, key)!r}")


def load(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml; sections other stages own are kept out of this view."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(Params)}
    return build(Params, {k: v for k, v in raw.items() if k in known})


def section(path: str | Path, name: str) -> dict:
    """A raw section, for stages whose params are defined next to their module."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return raw.get(name) or {}


PROFILES = ("cpu", "gpu")


def profile(path: str | Path = "params.yaml") -> str:
    """The top-level `profile:` of params.yaml (cpu when absent)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    name = raw.get("profile") or "cpu"
    if name not in PROFILES:
        raise ParamError(f"profile: must be one of {', '.join(PROFILES)}, got {name!r}")
    return name


def with_profile(raw: dict | None, table: dict, where: str) -> dict:
    """A section with every key its profile `table` holds and the section leaves null (or
    out) taken from the table; nested mappings (`model:`, `train:`) likewise, key by key."""
    out = dict(raw or {})
    for key, value in table.items():
        mine, dotted = out.get(key), f"{where}.{key}"
        if isinstance(value, dict):
            if mine is not None and not isinstance(mine, dict):
                raise ParamError(f"{dotted}: expected a mapping, got {mine!r}")
            out[key] = with_profile(mine, value, dotted)
        elif mine is None:
            out[key] = value
    return out


def profiled(
    cls: type, path: str | Path, name: str, tables: dict[str, dict], which: str | None = None
):
    """Section `name` of params.yaml as dataclass `cls`, its null keys filled from
    `tables[profile]` (the active profile unless `which` names one)."""
    table = tables[which or profile(path)]
    return build(cls, with_profile(section(path, name), table, name), name)


def merged_train(params: Params, overrides: dict | None, section: str = "train") -> TrainParams:
    """`train` defaults with a model section's overrides on top.

    The section's learning rate is `lr_scale` x `train.lr`, so `train.lr` moves every model
    at once; a section's own `lr`, when set (not null), replaces that product for it alone."""
    base = dataclasses.asdict(params.train)
    own = dict(overrides or {})
    scale, lr = own.pop("lr_scale", 1.0), own.pop("lr", None)
    unknown = sorted(set(own) - set(base))
    if unknown:
        raise ParamError(
            f"{section}.{unknown[0]}: unknown key (known: lr, lr_scale, {', '.join(base)})"
        )
    if not matches(scale, float) or scale <= 0:
        raise ParamError(f"{section}.lr_scale: must be a positive number, got {scale!r}")
    if lr is not None and (not matches(lr, float) or lr <= 0):
        raise ParamError(f"{section}.lr: must be a positive number or null, got {lr!r}")
    base.update(own)
    base["lr"] = float(lr) if lr is not None else params.train.lr * scale
    return build(TrainParams, base, "train")
