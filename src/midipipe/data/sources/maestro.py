"""MAESTRO: recorded piano performances, described by `maestro-v3.0.0.csv` at the dataset root.

Columns: canonical_composer, canonical_title, split (train/validation/test), year,
midi_filename (relative to the root), audio_filename, duration. The official split is kept
("validation" -> "valid"); it already keeps all performances of a piece on one side. The composer
is normalised to a surname key ("Frédéric Chopin" -> "chopin"; the first of "A / B").
song_id = composer + title, so performances of one work share a group.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import Piece, SourceError, inside, require_dir, require_file
from .names import normalize_composer, slug

log = logging.getLogger(__name__)

SUMMARY = "MAESTRO piano performances, composer and official split from its CSV"
COLUMNS = ("canonical_composer", "canonical_title", "split", "midi_filename")
SPLITS = {"train": "train", "validation": "valid", "test": "test"}


@dataclass
class MaestroOptions:
    path: str
    csv: str | None = None  # default: the maestro-v*.csv in `path`
    use_official_split: bool = True


@dataclass(frozen=True)
class _Row:
    path: Path
    relative: str
    composer: str | None
    song: str
    split: str | None


def open_source(options: MaestroOptions, name: str, param: str) -> Iterator[Piece]:
    root = require_dir(options.path, f"{param}.path")
    if options.csv is not None:
        csv_path = Path(options.csv).expanduser()
        csv_path = require_file(
            csv_path if csv_path.is_absolute() else root / csv_path, f"{param}.csv"
        )
    else:
        found = sorted(root.glob("maestro-v*.csv"))
        if not found:
            raise SourceError(f"{param}.csv: no maestro-v*.csv in {root}; set the csv option")
        csv_path = found[-1]
    rows = read_rows(root, csv_path, options, f"{param}.csv")
    return _iter(rows, name)


def read_rows(root: Path, csv_path: Path, options: MaestroOptions, param: str) -> list[_Row]:
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{param}: {csv_path} has no column(s) {missing}")
        rows = []
        for line, record in enumerate(reader, start=2):
            relative = record["midi_filename"].strip()
            split = SPLITS.get(record["split"].strip().lower())
            if split is None and record["split"].strip():
                raise SourceError(
                    f"{param}: {csv_path} line {line}: unknown split {record['split']!r}"
                )
            composer_text = record["canonical_composer"]
            composer = normalize_composer(composer_text)
            rows.append(
                _Row(
                    path=inside(root, relative, f"{param} ({csv_path} line {line})"),
                    relative=relative,
                    composer=composer,
                    song=slug(f"{composer_text} {record['canonical_title']}"),
                    split=split if options.use_official_split else None,
                )
            )
    return rows


def _iter(rows: list[_Row], name: str) -> Iterator[Piece]:
    missing = 0
    for row in rows:
        if not row.path.is_file():
            missing += 1
            log.debug("%s: listed but not found: %s", name, row.path)
            continue
        yield Piece(
            source=name,
            name=row.relative,
            song_id=row.song,
            path=row.path,
            composer=row.composer,
            genres=["classical", "piano"],
            split=row.split,
        )
    if missing:
        log.warning(
            "%s: %d of %d MAESTRO files listed in the CSV are missing", name, missing, len(rows)
        )
