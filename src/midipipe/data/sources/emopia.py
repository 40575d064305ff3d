"""EMOPIA: pop piano clips named `Q<1-4>_<songid>_<clip>.mid`, labelled by Russell quadrant.

The quadrant gives the emotion ("Q1".."Q4") and the signs of valence and arousal (`QUADRANTS`,
±1 for now). Clips of one song share its song_id (YouTube ids may themselves contain `_`,
so the song id is everything between the quadrant and the clip number). When the dataset's
split folder is there (`split/train_clip.csv`, `val_clip.csv`, `test_clip.csv`, each with a
`clip_name` column), its split is kept ("val" -> "valid"). Organize checks that the lists keep
each song's clips together (`splits.assign_songs` names any song they split) and sends the
clips they leave out to their song's split.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import Piece, SourceError, find_midis, require_dir

log = logging.getLogger(__name__)

SUMMARY = "EMOPIA, Russell quadrant from Q<1-4>_<songid>_<clip>.mid, official splits"

# Quadrant -> (valence, arousal) signs. Will move to params when the mapping gets magnitudes.
QUADRANTS: dict[str, tuple[float, float]] = {
    "Q1": (1.0, 1.0),  # happy, excited
    "Q2": (-1.0, 1.0),  # tense, angry
    "Q3": (-1.0, -1.0),  # sad
    "Q4": (1.0, -1.0),  # calm, relaxed
}
CLIP_NAME = re.compile(r"^(Q[1-4])_(.+)_(\d+)$")
SPLIT_FILES = {"train": "train_clip.csv", "valid": "val_clip.csv", "test": "test_clip.csv"}


@dataclass
class EmopiaOptions:
    path: str
    split_dir: str | None = None  # default: <path>/split when it exists
    use_official_split: bool = True


def open_source(options: EmopiaOptions, name: str, param: str) -> Iterator[Piece]:
    root = require_dir(options.path, f"{param}.path")
    splits: dict[str, str] = {}
    if options.use_official_split:
        if options.split_dir is not None:
            split_dir = require_dir(_under(root, options.split_dir), f"{param}.split_dir")
        else:
            split_dir = root / "split"
        if split_dir.is_dir():
            splits = read_splits(split_dir, f"{param}.split_dir")
    return _iter(root, splits, name)


def _under(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def quadrant_of(valence: float | None, arousal: float | None) -> str | None:
    """The quadrant whose signs match (None on an axis at exactly 0 or unknown)."""
    if not valence or not arousal:
        return None
    for quadrant, (v, a) in QUADRANTS.items():
        if (v > 0) == (valence > 0) and (a > 0) == (arousal > 0):
            return quadrant
    return None


def read_splits(split_dir: Path, param: str) -> dict[str, str]:
    """clip stem -> split, from the split CSVs present in `split_dir`."""
    splits: dict[str, str] = {}
    found = False
    for split, file_name in SPLIT_FILES.items():
        path = split_dir / file_name
        if not path.is_file():
            continue
        found = True
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "clip_name" not in (reader.fieldnames or []):
                raise SourceError(
                    f"{param}: {path} has no clip_name column (columns: {reader.fieldnames})"
                )
            for row in reader:
                clip = Path((row["clip_name"] or "").strip()).stem
                if clip:
                    splits[clip] = split
    if not found:
        log.warning(
            "%s: no split CSVs (%s) in %s", param, ", ".join(SPLIT_FILES.values()), split_dir
        )
    return splits


def song_splits(splits: dict[str, str]) -> dict[str, str]:
    """song id -> the official split of its listed clips."""
    out = {}
    for clip, split in splits.items():
        match = CLIP_NAME.match(clip)
        if match:
            out.setdefault(match.group(2), split)
    return out


def unlisted_split(song: str, by_song: dict[str, str]) -> str | None:
    """Split of a clip the split files leave out: train, unless its song is in valid or test
    (then None: left out, so those splits stay exactly the published ones and no song
    straddles them)."""
    split = by_song.get(song, "train")
    return "train" if split == "train" else None


def _iter(root: Path, splits: dict[str, str], name: str) -> Iterator[Piece]:
    skipped = left_out = 0
    by_song = song_splits(splits)
    for path in find_midis(root):
        match = CLIP_NAME.match(path.stem)
        if not match:
            skipped += 1
            continue
        quadrant, song, _clip = match.groups()
        split = splits.get(path.stem)
        if splits and split is None:
            split = unlisted_split(song, by_song)
            if split is None:
                left_out += 1
                continue
        valence, arousal = QUADRANTS[quadrant]
        yield Piece(
            source=name,
            name=path.relative_to(root).as_posix(),
            song_id=song,
            path=path,
            emotion=quadrant,
            valence=valence,
            arousal=arousal,
            split=split,
        )
    if skipped:
        log.warning(
            "%s: %d files skipped: names not of the form Q<1-4>_<songid>_<clip>.mid", name, skipped
        )
    if left_out:
        log.info(
            "%s: %d clips in no split file left out: their songs are in the official valid or "
            "test split, which are kept as published",
            name,
            left_out,
        )
