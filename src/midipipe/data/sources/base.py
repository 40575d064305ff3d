"""What every corpus adapter yields: one `Piece` per MIDI file, with the labels its corpus knows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from midipipe.core.errors import SourceError


@dataclass
class BarLabel:
    bar: int
    valence: float
    arousal: float
    n_raters: int


@dataclass
class Piece:
    """One MIDI file and its labels, before organize stores it in `data/corpus/`.

    Exactly one of `path` (a file on disk) or `data` (MIDI bytes: a music21 conversion,
    a GigaMIDI row) is set. Unknown labels stay None / empty.
    """

    source: str  # the source's name from params (e.g. "music21", "xmidi")
    name: str  # the original file name or id, for messages and rejects
    song_id: str  # grouping key: clips of one song never straddle splits
    path: Path | None = None
    data: bytes | None = None
    composer: str | None = None
    genres: list[str] = field(default_factory=list)  # genre / style / form tags
    period: str | None = None
    emotion: str | None = None
    valence: float | None = None  # piece-level, in [-1, 1]
    arousal: float | None = None
    split: str | None = None  # an official split, when the corpus ships one
    bar_labels: list[BarLabel] = field(default_factory=list)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None, f"piece {self.name} has neither path nor data"
        return self.path.read_bytes()


def require_dir(value: str | Path | None, param: str) -> Path:
    """A configured folder that must exist; the error names the param."""
    if value in (None, ""):
        raise SourceError(f"{param}: no path given")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise SourceError(f"{param}: folder not found: {path}")
    return path


def require_file(value: str | Path | None, param: str) -> Path:
    if value in (None, ""):
        raise SourceError(f"{param}: no path given")
    path = Path(value).expanduser()
    if not path.is_file():
        raise SourceError(f"{param}: file not found: {path}")
    return path


def inside(root: Path, relative: str, param: str) -> Path:
    """Resolve a path from a manifest or CSV, refusing any that escapes `root`."""
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise SourceError(f"{param}: path {relative!r} escapes its root {root}")
    return target


MIDI_SUFFIXES = (".mid", ".midi", ".MID", ".MIDI", ".kar")


def find_midis(root: Path) -> Iterator[Path]:
    """MIDI files under `root` in path order (as `sorted(root.rglob("*"))` has them, symlinked
    folders not entered), walked a folder at a time: memory holds one folder's names, not a
    `Path` per file of the corpus."""
    for name in sorted(os.listdir(root)):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            yield from find_midis(path)
        elif path.suffix in MIDI_SUFFIXES and path.is_file():
            yield path
