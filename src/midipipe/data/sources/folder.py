"""A folder of MIDI files, organised by composer: one sub-folder per composer, or a metadata CSV.

`composer_from: subfolder`: `<path>/<composer>/**/*.mid`; files directly in `<path>` have no
composer. `composer_from: csv`: `metadata_csv` lists the files (paths relative to `path`, which
must stay inside it) with a composer and optionally genres and a song id; files it does not list
are skipped unless `include_unlisted`. `composer_from: none`: files only.

The CSV's columns are mapped by option, so a dataset's own metadata works as it is. ASAP's:

    {kind: folder, name: asap, path: .../asap, composer_from: csv, metadata_csv: metadata.csv,
     path_column: [midi_performance, midi_score], song_column: folder}

Several path columns name files of the same row's work (a performance and its score); a file
listed by many rows (ASAP's score, once per performance) is yielded once.

Each file is its own song unless the CSV's `song_column` groups several (movements, versions,
a work's score and performances): a song never straddles splits.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import Piece, SourceError, find_midis, inside, require_dir, require_file
from .names import normalize_composer, slug

log = logging.getLogger(__name__)

SUMMARY = "a folder of MIDI files, composer from sub-folders or a metadata CSV"


@dataclass
class FolderOptions:
    path: str
    composer_from: Literal["subfolder", "csv", "none"] = "subfolder"
    metadata_csv: str | None = None  # absolute, or relative to `path`
    path_column: str | list[str] = "path"  # several: each names a file of the row's song
    composer_column: str = "composer"
    genre_column: str | None = "genre"  # used when the CSV has it
    song_column: str | None = "song"  # used when the CSV has it
    genre_separator: str = ";"
    include_unlisted: bool = False  # csv mode: also yield files the CSV does not list
    composer_surname: bool = False  # 'Johann Sebastian Bach' -> 'bach', like music21 / MAESTRO


def open_source(options: FolderOptions, name: str, param: str) -> Iterator[Piece]:
    root = require_dir(options.path, f"{param}.path")
    if options.composer_from == "csv":
        rows = _read_csv(root, options, param)
        return _iter_csv(root, rows, options, name)
    if options.metadata_csv is not None:
        raise SourceError(
            f"{param}.metadata_csv: only used with composer_from: csv "
            f"(composer_from is {options.composer_from!r})"
        )
    return _iter_subfolders(root, options, name)


def _composer(value: str | None, options: FolderOptions) -> str | None:
    if not value or not value.strip():
        return None
    return normalize_composer(value) if options.composer_surname else slug(value) or None


def _iter_subfolders(root: Path, options: FolderOptions, name: str) -> Iterator[Piece]:
    for path in find_midis(root):
        relative = path.relative_to(root)
        composer = None
        if options.composer_from == "subfolder" and len(relative.parts) > 1:
            composer = _composer(relative.parts[0], options)
        yield Piece(
            source=name,
            name=relative.as_posix(),
            song_id=relative.with_suffix("").as_posix(),
            path=path,
            composer=composer,
        )


@dataclass(frozen=True)
class _Row:
    path: Path
    composer: str | None
    genres: list[str]
    song: str | None


def _read_csv(root: Path, options: FolderOptions, param: str) -> list[_Row]:
    """Every row checked before any piece is yielded: columns present, paths inside `root`."""
    where = f"{param}.metadata_csv"
    if options.metadata_csv is None:
        raise SourceError(f"{where}: required with composer_from: csv")
    csv_path = Path(options.metadata_csv).expanduser()
    csv_path = require_file(csv_path if csv_path.is_absolute() else root / csv_path, where)
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        path_columns = (
            [options.path_column] if isinstance(options.path_column, str) else options.path_column
        )
        if not path_columns:
            raise SourceError(f"{param}.path_column: name at least one column")
        for needed in (*path_columns, options.composer_column):
            if needed not in columns:
                raise SourceError(
                    f"{where}: {csv_path} has no column {needed!r} (columns: {columns})"
                )
        genre_col = options.genre_column if options.genre_column in columns else None
        song_col = options.song_column if options.song_column in columns else None
        rows = []
        for line, record in enumerate(reader, start=2):
            relatives = [(record.get(c) or "").strip() for c in path_columns]
            if not relatives[0]:
                raise SourceError(f"{where}: {csv_path} line {line}: empty {path_columns[0]}")
            genres = []
            if genre_col and record.get(genre_col):
                genres = [slug(g) for g in record[genre_col].split(options.genre_separator)]
            song = (record.get(song_col) or "").strip() if song_col else ""
            rows.extend(  # later path columns may be empty (a performance without a score)
                _Row(
                    path=inside(root, relative, f"{where} ({csv_path} line {line})"),
                    composer=_composer(record.get(options.composer_column), options),
                    genres=[g for g in dict.fromkeys(genres) if g],
                    song=song or None,
                )
                for relative in relatives
                if relative
            )
    return rows


def _iter_csv(root: Path, rows: list[_Row], options: FolderOptions, name: str) -> Iterator[Piece]:
    listed: set[Path] = set()
    missing = 0
    for row in rows:
        if row.path in listed:
            continue
        if not row.path.is_file():
            missing += 1
            log.warning("%s: listed in the metadata CSV but not found: %s", name, row.path)
            continue
        listed.add(row.path)
        relative = row.path.relative_to(root.resolve())
        yield Piece(
            source=name,
            name=relative.as_posix(),
            song_id=row.song or relative.with_suffix("").as_posix(),
            path=row.path,
            composer=row.composer,
            genres=row.genres,
        )
    if missing:
        log.warning("%s: %d files listed in the metadata CSV are missing", name, missing)
    unlisted = [p for p in find_midis(root) if p.resolve() not in listed]
    if unlisted and not options.include_unlisted:
        log.info("%s: %d MIDI files not in the metadata CSV skipped", name, len(unlisted))
        return
    for path in unlisted:
        relative = path.relative_to(root)
        yield Piece(
            source=name,
            name=relative.as_posix(),
            song_id=relative.with_suffix("").as_posix(),
            path=path,
        )
