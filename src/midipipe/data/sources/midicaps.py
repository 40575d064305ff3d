"""MidiCaps: captions and tags for Lakh MIDI files, read over a local copy of LMD.

MidiCaps ships `train.json` as JSON lines, one object per file: `location` (the path under the
LMD root, e.g. `lmd_full/1/1a2b....mid`), `genre` and `mood` (lists, most likely first, with
`genre_prob`/`mood_prob`), `key`, `time_signature`, `tempo`, `caption`, ..., and `test_set`
(true for the paper's test files). A CSV or Parquet export with the same columns also works.

genres = the `genre` list; split = "test" for `test_set` files, otherwise left to the organize
step. Files missing under `lmd_root` are skipped.

song_id groups the versions of one song (LMD holds many MIDI transcriptions per song): the
Million Song Dataset id LMD matched the file to, from a `TR...` id in its location
(`lmd_matched/`) or from LMD's `match_scores.json` (`match_scores`: MSD id -> {md5: score},
the best score wins); else normalised artist + title when the metadata has `artist` and
`title` columns; else the file's md5 stem.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import Piece, SourceError, inside, require_dir, require_file
from .names import slug, work_key

log = logging.getLogger(__name__)

SUMMARY = "MidiCaps metadata (location, genre lists) over a Lakh MIDI root"


@dataclass
class MidiCapsOptions:
    metadata: str  # train.json (JSON lines), or a .csv / .parquet with the same columns
    lmd_root: str  # the folder `location` is relative to (it holds lmd_full/)
    max_genres: int | None = None  # keep only the most likely N genres
    use_test_set: bool = True  # test_set rows -> split "test"
    match_scores: str | None = None  # LMD's match_scores.json: groups versions by MSD id


MSD_ID = re.compile(r"TR[A-Z0-9]{16}")


@dataclass(frozen=True)
class _Row:
    location: str
    genres: tuple[str, ...]
    test: bool
    work: str | None  # normalised artist + title, when the metadata has them


def open_source(options: MidiCapsOptions, name: str, param: str) -> Iterator[Piece]:
    metadata = require_file(options.metadata, f"{param}.metadata")
    root = require_dir(options.lmd_root, f"{param}.lmd_root")
    rows = [_row(record, metadata, param) for record in read_records(metadata, param)]
    for row in rows:  # every location checked before the first piece
        inside(root, row.location, f"{param}.metadata ({metadata})")
    msd = {}
    if options.match_scores is not None:
        msd = read_match_scores(require_file(options.match_scores, f"{param}.match_scores"))
    log.info("%s: %d MidiCaps rows", name, len(rows))
    return _iter(root, rows, options, name, msd)


def read_match_scores(path: Path) -> dict[str, str]:
    """LMD md5 -> the MSD id it matches best, from `match_scores.json`."""
    best: dict[str, tuple[float, str]] = {}
    for msd_id, matches in json.loads(path.read_text()).items():
        for md5, score in matches.items():
            if md5 not in best or score > best[md5][0]:
                best[md5] = (float(score), msd_id)
    return {md5: msd_id for md5, (_, msd_id) in best.items()}


def song_key(row: _Row, msd: dict[str, str]) -> str:
    """The MSD id, else artist/title, else the md5 stem (module docstring)."""
    stem = Path(row.location).stem
    found = MSD_ID.search(row.location)
    msd_id = found.group(0) if found else msd.get(stem)
    if msd_id:
        return f"msd:{msd_id}"
    return row.work or stem


def read_records(path: Path, param: str) -> Iterator[dict]:
    """The metadata rows as dicts, from JSON lines (or one JSON array), CSV or Parquet."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        wanted = ("location", "genre", "test_set", "artist", "title")
        table = pq.read_table(path, columns=_present(path, wanted))
        yield from table.to_pylist()
        return
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            yield from csv.DictReader(handle)
        return
    with path.open(encoding="utf-8") as handle:
        first = handle.read(1)
        handle.seek(0)
        if first == "[":
            yield from json.load(handle)
            return
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise SourceError(f"{param}.metadata: {path} line {number}: {error}") from None


def _present(path: Path, wanted: tuple[str, ...]) -> list[str]:
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    return [c for c in wanted if c in names]


def _row(record: dict, path: Path, param: str) -> _Row:
    location = record.get("location")
    if not location:
        raise SourceError(f"{param}.metadata: {path} has a row without 'location': {record!r:.200}")
    return _Row(
        location=str(location),
        genres=tuple(g for g in (slug(str(x)) for x in _as_list(record.get("genre"))) if g),
        test=_as_bool(record.get("test_set")),
        work=work_key(record.get("artist"), record.get("title")),
    )


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):  # CSV exports write lists as "['rock', 'pop']"
        text = value.strip()
        if text.startswith("["):
            try:
                return list(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                text = text.strip("[]")
        return [v.strip(" '\"") for v in text.split(",") if v.strip(" '\"")]
    return list(value)


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _iter(
    root: Path, rows: list[_Row], options: MidiCapsOptions, name: str, msd: dict[str, str]
) -> Iterator[Piece]:
    missing = 0
    for row in rows:
        path = inside(root, row.location, name)
        if not path.is_file():
            missing += 1
            log.debug("%s: not under lmd_root: %s", name, row.location)
            continue
        genres = list(row.genres[: options.max_genres] if options.max_genres else row.genres)
        yield Piece(
            source=name,
            name=row.location,
            song_id=song_key(row, msd),
            path=path,
            genres=genres,
            split="test" if (row.test and options.use_test_set) else None,
        )
    if missing:
        log.warning(
            "%s: %d of %d MidiCaps files not found under %s", name, missing, len(rows), root
        )
