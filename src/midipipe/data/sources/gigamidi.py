"""GigaMIDI (Metacreation/GigaMIDI): MIDI bytes and metadata in Parquet rows.

Rows carry `md5` (of the MIDI bytes: GigaMIDI's file name and our piece_id), `music` (the bytes),
`split` (train/validation/test), `title`, `artist`, style columns (`music_styles_curated`,
`music_style_scraped`, `music_style_audio_text_Discogs`, `..._Lastfm`, `..._Tagtraum`) and
many per-track statistics (NOMML, loops, ...), which this adapter does not need.

Two ways in, one row -> Piece function:
  - `parquet`: local Parquet files (a path, a glob, or a list of them), read batch by batch
    with pyarrow, only the needed columns, so memory stays flat;
  - `hf_name` (+ `hf_config` such as "v2.0.0", `revision`, `split`): `datasets.load_dataset`,
    streaming by default, so nothing is downloaded in full.

genres = the first non-empty of `style_columns` (curated styles first); composer = the artist
(slugged: these are mostly bands, not surnames); song_id = normalised artist + title
(`names.work_key`), so renditions of one song share a split, else the md5;
split: "validation" -> "valid".
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from .base import Piece, SourceError
from .names import slug, work_key

log = logging.getLogger(__name__)

SUMMARY = "GigaMIDI rows (md5, music bytes, styles) from local Parquet or the HF hub"
REQUIRED = ("md5", "music")
OPTIONAL = ("split", "artist", "title")
SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}


@dataclass
class GigaMidiOptions:
    parquet: str | list[str] | None = None  # path(s) or glob(s) of local Parquet files
    hf_name: str | None = None  # e.g. Metacreation/GigaMIDI
    hf_config: str | None = None  # e.g. v2.0.0
    revision: str | None = None
    split: str | None = None  # HF split to load; with `parquet`, keep only rows of this split
    streaming: bool = True
    limit: int | None = None  # stop after this many pieces
    batch_size: int = 256  # Parquet rows read at a time
    style_columns: list[str] = field(
        default_factory=lambda: [
            "music_styles_curated",
            "music_style_scraped",
            "music_style_audio_text_Discogs",
            "music_style_audio_text_Lastfm",
            "music_style_audio_text_Tagtraum",
        ]
    )
    use_official_split: bool = True


def open_source(options: GigaMidiOptions, name: str, param: str) -> Iterator[Piece]:
    if (options.parquet is None) == (options.hf_name is None):
        raise SourceError(f"{param}: set exactly one of parquet (local files) or hf_name (hub)")
    if options.limit is not None and options.limit < 0:
        raise SourceError(f"{param}.limit: must be >= 0, got {options.limit}")
    if options.batch_size < 1:
        raise SourceError(f"{param}.batch_size: must be >= 1, got {options.batch_size}")
    if options.parquet is not None:
        files = parquet_files(options.parquet, f"{param}.parquet")
        rows = _parquet_rows(files, options)
    else:
        rows = _hub_rows(options, param)
    return iter_pieces(rows, options, name)


def parquet_files(value: str | list[str], param: str) -> list[Path]:
    """The Parquet files a path, glob or list names, each checked for GigaMIDI's columns."""
    import pyarrow.parquet as pq

    files: list[Path] = []
    for pattern in [value] if isinstance(value, str) else value:
        expanded = str(Path(pattern).expanduser())
        matches = (
            sorted(glob.glob(expanded, recursive=True))
            if glob.has_magic(expanded)
            else ([expanded] if Path(expanded).exists() else [])
        )
        if not matches:
            raise SourceError(f"{param}: no Parquet file found: {expanded}")
        for match in matches:
            path = Path(match)
            files.extend(sorted(path.rglob("*.parquet")) if path.is_dir() else [path])
    for path in files:
        try:
            names = set(pq.read_schema(path).names)
        except Exception as error:
            raise SourceError(f"{param}: not a readable Parquet file: {path} ({error})") from None
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise SourceError(
                f"{param}: {path} has no column(s) {missing} (GigaMIDI rows need {list(REQUIRED)})"
            )
    return files


def _parquet_rows(files: list[Path], options: GigaMidiOptions) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for path in files:
        handle = pq.ParquetFile(path)
        names = set(handle.schema_arrow.names)
        wanted = [c for c in (*REQUIRED, *OPTIONAL, *options.style_columns) if c in names]
        for batch in handle.iter_batches(batch_size=options.batch_size, columns=wanted):
            for row in batch.to_pylist():
                if options.split and row.get("split") not in (None, options.split):
                    continue
                yield row


def _hub_rows(options: GigaMidiOptions, param: str) -> Iterable[dict]:
    import datasets

    try:
        return datasets.load_dataset(
            options.hf_name,
            options.hf_config,
            split=options.split or "train",
            revision=options.revision,
            streaming=options.streaming,
        )
    except Exception as error:  # no network, gated dataset without a token, bad config...
        raise SourceError(
            f"{param}.hf_name: cannot open {options.hf_name!r} "
            f"(config {options.hf_config!r}, split {options.split or 'train'!r}): {error}"
        ) from None


def iter_pieces(rows: Iterable[dict], options: GigaMidiOptions, name: str) -> Iterator[Piece]:
    """Pieces from GigaMIDI rows (Parquet batches, or a `datasets` (Iterable)Dataset)."""
    pieces = (row_to_piece(row, options, name) for row in rows)
    yield from islice((p for p in pieces if p is not None), options.limit)


def row_to_piece(row: dict, options: GigaMidiOptions, name: str) -> Piece | None:
    md5, music = row.get("md5"), row.get("music")
    if not md5 or not music:
        log.warning("%s: row without md5 or music bytes skipped (md5=%r)", name, md5)
        return None
    artist = row.get("artist")
    split = SPLITS.get(str(row.get("split") or options.split or "").lower())
    return Piece(
        source=name,
        name=str(md5),
        song_id=work_key(artist, row.get("title")) or str(md5),
        data=bytes(music),
        composer=(slug(artist) or None) if isinstance(artist, str) else None,
        genres=_styles(row, options.style_columns),
        split=split if options.use_official_split else None,
    )


def _styles(row: dict, columns: list[str]) -> list[str]:
    """Tags from the first style column that has any: curated labels over machine matches."""
    for column in columns:
        value = row.get(column)
        if not value:
            continue
        values = [value] if isinstance(value, str) else list(value)
        tags = [t for t in dict.fromkeys(slug(str(v)) for v in values if v) if t]
        if tags:
            return tags
    return []
