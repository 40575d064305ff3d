"""XMIDI: emotion and genre live in the file name, `XMIDI_<Emotion>_<Genre>_<ID>.midi`.

Files that do not follow the pattern are skipped and counted (a stray file must not get
labels it does not have). Each file is its own song (song_id: the ID).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import Piece, find_midis, require_dir
from .names import slug

log = logging.getLogger(__name__)

SUMMARY = "XMIDI, emotion and genre from XMIDI_<Emotion>_<Genre>_<ID>.midi file names"
FILE_NAME = re.compile(r"^XMIDI_([^_]+)_([^_]+)_(.+)\.midi?$", re.IGNORECASE)


@dataclass
class XMidiOptions:
    path: str


def open_source(options: XMidiOptions, name: str, param: str) -> Iterator[Piece]:
    root = require_dir(options.path, f"{param}.path")
    return _iter(root, name)


def parse_name(file_name: str) -> tuple[str, str, str] | None:
    """(emotion, genre, id) from an XMIDI file name; None when it does not follow the pattern."""
    match = FILE_NAME.match(file_name)
    if not match:
        return None
    emotion, genre, ident = match.groups()
    return emotion.lower(), slug(genre), ident


def _iter(root: Path, name: str) -> Iterator[Piece]:
    skipped = 0
    for path in find_midis(root):
        parsed = parse_name(path.name)
        if parsed is None:
            skipped += 1
            log.debug("%s: not an XMIDI file name, skipped: %s", name, path)
            continue
        emotion, genre, ident = parsed
        yield Piece(
            source=name,
            name=path.relative_to(root).as_posix(),
            song_id=ident,
            path=path,
            genres=[genre],
            emotion=emotion,
        )
    if skipped:
        log.warning(
            "%s: %d files skipped: names not of the form XMIDI_<Emotion>_<Genre>_<ID>.midi",
            name,
            skipped,
        )
