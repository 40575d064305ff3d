"""The organized corpus (data/manifest.parquet + data/midi) as Parquet in GigaMIDI's schema, so
stages 10-11 run unchanged on the embedded default (`make run`) and on GigaMIDI itself.

Mapping: md5 = piece_id (md5 of the bytes, GigaMIDI's key), music = the bytes, split (valid ->
validation), music_styles_curated = manifest genres, music_style_scraped = period,
artist = composer, title = the piece's name in its source; num_tracks, TPQN, total_notes and
the instrument category (0 drums only, 1 with drums, 2 no drums) are read from the MIDI. The
Discogs/Last.fm/Tagtraum columns exist but are empty: no audio-text matches here. NOMML and
loop columns are left out (GigaMIDI computes them with its own tools).

Stage: stages/14_export_gigamidi.py (`export_gigamidi:` in params.yaml).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.annotate.params import INSTRUMENT_COLUMN
from midipipe.core.errors import BadMidi
from midipipe.core.io import atomic_path
from midipipe.data.midi import load_score

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("md5", pa.string()),
        ("music", pa.binary()),
        ("num_tracks", pa.int64()),
        ("TPQN", pa.int64()),
        ("total_notes", pa.int64()),
        (INSTRUMENT_COLUMN, pa.int64()),
        ("music_styles_curated", pa.list_(pa.string())),
        ("music_style_scraped", pa.string()),
        ("music_style_audio_text_Discogs", pa.list_(pa.string())),
        ("music_style_audio_text_Lastfm", pa.list_(pa.string())),
        ("music_style_audio_text_Tagtraum", pa.list_(pa.string())),
        ("title", pa.string()),
        ("artist", pa.string()),
    ]
)
SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def midi_facts(data: bytes) -> dict:
    """num_tracks, TPQN, total_notes and the instrument category of one file (None if bad)."""
    try:
        score = load_score(data)
    except BadMidi:
        return {"num_tracks": None, "TPQN": None, "total_notes": None, INSTRUMENT_COLUMN: None}
    tracks = [t for t in score.tracks if t.note_num()]
    drums = [t.is_drum for t in tracks]
    category = 0 if all(drums) else (1 if any(drums) else 2)
    return {
        "num_tracks": len(score.tracks),
        "TPQN": score.ticks_per_quarter,
        "total_notes": score.note_num(),
        INSTRUMENT_COLUMN: category,
    }


def gigamidi_row(row: dict, data: bytes) -> dict:
    title = Path(row.get("original") or row["piece_id"]).stem
    return {
        "split": SPLITS.get(row.get("split") or "", row.get("split")),
        "md5": row["piece_id"],
        "music": data,
        **midi_facts(data),
        "music_styles_curated": list(row.get("genres") or []),
        "music_style_scraped": row.get("period") or "",
        "music_style_audio_text_Discogs": [],
        "music_style_audio_text_Lastfm": [],
        "music_style_audio_text_Tagtraum": [],
        "title": title,
        "artist": row.get("composer") or "",
    }


@dataclass
class ExportParams:
    """`export_gigamidi:` section of params.yaml."""

    rows_per_file: int = 2048


def export(
    manifest: str | Path, midi_dir: str | Path, out_dir: str | Path, rows_per_file: int = 2048
) -> list[Path]:
    """Write `out_dir/part-NNNNN.parquet` (GigaMIDI schema) from the manifest; returns them.
    Memory holds one file's rows at a time; every file is written atomically."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    table = pq.read_table(manifest)
    wanted = [
        c
        for c in ("piece_id", "path", "original", "split", "composer", "genres", "period")
        if c in table.column_names
    ]
    paths: list[Path] = []
    batch: list[dict] = []

    def flush() -> None:
        path = out_dir / f"part-{len(paths):05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(batch, schema=SCHEMA), tmp, row_group_size=256)
        paths.append(path)
        batch.clear()

    missing = 0
    for row in table.select(wanted).to_pylist():
        try:
            data = (Path(midi_dir) / row["path"]).read_bytes()
        except OSError as exc:
            missing += 1
            log.warning("skipping %s: %s", row["piece_id"], exc)
            continue
        batch.append(gigamidi_row(row, data))
        if len(batch) >= rows_per_file:
            flush()
    if batch or not paths:
        flush()
    log.info(
        "exported %d pieces to %s (%d missing files)", table.num_rows - missing, out_dir, missing
    )
    return paths
