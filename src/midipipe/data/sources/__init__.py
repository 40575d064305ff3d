"""Corpus adapters: each `data.sources` entry in params.yaml becomes a stream of `Piece`s.

    data:
      sources:
        - {kind: music21, name: music21}
        - {kind: folder, name: mylab, path: /data/midis, composer_from: subfolder}

`iter_source(spec, param)` checks the whole entry (kind, option names and types, paths,
metadata files) before it returns, so a misconfigured source fails before anything is written;
the pieces themselves are produced lazily. `KINDS` lists the adapters: each has an options
dataclass (its typed keys and defaults) and an `open_source(options, name, param)`.
A piece's `song_id` is unique within its source (organize prefixes the source name).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from midipipe.core.params import build

from . import emopia, folder, gigamidi, maestro, midicaps, music21_corpus, vgmidi, xmidi
from .base import BarLabel, Piece, SourceError

__all__ = ["KINDS", "Adapter", "BarLabel", "Piece", "SourceError", "describe", "iter_source"]


@dataclass(frozen=True)
class Adapter:
    options: type  # a dataclass: the keys a source entry may set besides kind and name
    open_source: Callable[[Any, str, str], Iterator[Piece]]  # (options, name, param)
    summary: str


KINDS: dict[str, Adapter] = {
    "music21": Adapter(
        music21_corpus.Music21Options, music21_corpus.open_source, music21_corpus.SUMMARY
    ),
    "folder": Adapter(folder.FolderOptions, folder.open_source, folder.SUMMARY),
    "xmidi": Adapter(xmidi.XMidiOptions, xmidi.open_source, xmidi.SUMMARY),
    "emopia": Adapter(emopia.EmopiaOptions, emopia.open_source, emopia.SUMMARY),
    "vgmidi": Adapter(vgmidi.VGMidiOptions, vgmidi.open_source, vgmidi.SUMMARY),
    "midicaps": Adapter(midicaps.MidiCapsOptions, midicaps.open_source, midicaps.SUMMARY),
    "maestro": Adapter(maestro.MaestroOptions, maestro.open_source, maestro.SUMMARY),
    "gigamidi": Adapter(gigamidi.GigaMidiOptions, gigamidi.open_source, gigamidi.SUMMARY),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # it names folders (midipipe export)


def parse_spec(spec: dict, param: str) -> tuple[str, str, Any]:
    """(kind, name, typed options) of one source entry, or a SourceError naming the bad key."""
    if not isinstance(spec, dict):
        raise SourceError(f"{param}: expected a mapping with 'kind' and 'name', got {spec!r}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise SourceError(
            f"{param}.kind: unknown source kind {kind!r}; known kinds: {', '.join(KINDS)}"
        )
    name = spec.get("name", kind)
    if not isinstance(name, str) or not _NAME.match(name):
        raise SourceError(
            f"{param}.name: {name!r} must be letters, digits, '.', '_' or '-' (it names folders)"
        )
    values = {k: v for k, v in spec.items() if k not in ("kind", "name")}
    return kind, name, build(KINDS[kind].options, values, param, error=SourceError)


def iter_source(spec: dict, param: str) -> Iterator[Piece]:
    """The pieces of one `data.sources` entry; `param` (e.g. "data.sources[2]") names it in
    errors. Everything that can be checked is checked before this returns."""
    kind, name, options = parse_spec(spec, param)
    return KINDS[kind].open_source(options, name, param)


def _changed_options(options: Any) -> str:
    """The options that differ from their defaults, as `key=value` pairs."""
    parts = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            parts.append(f"{f.name}={value}")
    return ", ".join(parts)


def describe(spec: dict) -> str:
    """One line for `midipipe info`: name, kind, what it is, and the options that are set."""
    kind, name, options = parse_spec(spec, "source")
    set_options = _changed_options(options)
    return f"{name} ({kind}): {KINDS[kind].summary}" + (f"; {set_options}" if set_options else "")
