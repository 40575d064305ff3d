"""Stage 00: gather every configured source into `data/midi/`, the manifest and bar labels.

Every source is validated before anything is written, so a missing path or unknown kind
fails fast with nothing half-built. Outputs are assembled in a temporary folder and moved
into place at the end.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from midipipe.core.errors import BadMidi
from midipipe.core.io import write_json, write_rows
from midipipe.core.params import Params
from midipipe.data import splits
from midipipe.data.midi import load_score, piece_id, stats
from midipipe.data.pool import Failure, robust_map
from midipipe.data.sources import iter_source
from midipipe.data.sources.names import slug

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),  # relative to data/midi
        ("original", pa.string()),  # the file's name in its source
        ("song_id", pa.string()),
        ("split", pa.string()),
        ("composer", pa.string()),
        ("genres", pa.list_(pa.string())),
        ("period", pa.string()),
        ("emotion", pa.string()),
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("n_notes", pa.int64()),
        ("n_bars", pa.int64()),
        ("duration_s", pa.float32()),
        ("n_tracks", pa.int32()),
    ]
)

BAR_VA_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("bar", pa.int32()),
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("n_raters", pa.int32()),
    ]
)


def _stats_of(path: str) -> dict:
    try:
        s = stats(load_score(Path(path)))
    except BadMidi as exc:
        log.info("no stats for %s: %s", path, exc)
        return {}
    return {
        "n_notes": s.n_notes,
        "n_bars": s.n_bars,
        "duration_s": s.duration_s,
        "n_tracks": s.n_tracks,
    }


def organize(params: Params, data_dir: str | Path = "data", metrics_path: str | Path | None = None):
    """Build `data_dir/midi/`, `data_dir/manifest.parquet` and `data_dir/labels/bar_va.parquet`."""
    data_dir = Path(data_dir)
    o = params.organize
    splits.check_fractions(o.valid_frac, o.test_frac)
    sources = [
        iter_source(spec, f"data.sources[{i}]") for i, spec in enumerate(params.data.sources)
    ]

    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".organize-", dir=data_dir))
    try:
        rows, bar_rows, counts = _collect(sources, tmp / "midi")
        chosen, conflicts = splits.assign_songs(
            [(r["song_id"], r.pop("official_split")) for r in rows],
            o.seed,
            o.valid_frac,
            o.test_frac,
        )
        for row, split in zip(rows, chosen, strict=True):
            row["split"] = split
        counts["split_conflicting_songs"] = len(conflicts)
        results = robust_map(
            _stats_of,
            [str(tmp / "midi" / r["path"]) for r in rows],
            workers=o.workers,
            timeout=o.timeout_s,
            batch_size=16,
        )
        for row, (_, got) in tqdm(
            zip(rows, results, strict=True), total=len(rows), desc="stats", unit="file"
        ):
            row.update({} if isinstance(got, Failure) else got)
        rows.sort(key=lambda r: r["piece_id"])
        write_rows(tmp / "manifest.parquet", rows, MANIFEST_SCHEMA)
        write_rows(tmp / "labels" / "bar_va.parquet", bar_rows, BAR_VA_SCHEMA)
        for name in ("midi", "manifest.parquet", "labels"):
            target = data_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (tmp / name).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {
        "pieces": len(rows),
        "songs": len({r["song_id"] for r in rows}),
        "bar_labels": len(bar_rows),
        **counts,
    }
    for split in splits.SPLITS:
        summary[f"split_{split}"] = sum(r["split"] == split for r in rows)
    for source, n in sorted(Counter(r["source"] for r in rows).items()):
        summary[f"source_{source}"] = n
    if metrics_path:
        write_json(metrics_path, summary)
    log.info("organized %d pieces from %d sources", len(rows), len(sources))
    return summary


def _collect(sources, midi_dir: Path) -> tuple[list[dict], list[dict], dict]:
    rows: list[dict] = []
    bar_rows: list[dict] = []
    seen: set[str] = set()
    duplicates = unreadable = 0
    for pieces in sources:
        for piece in pieces:
            try:
                data = piece.read_bytes()
            except OSError as exc:
                unreadable += 1
                log.warning("cannot read %s from source %s: %s", piece.name, piece.source, exc)
                continue
            pid = piece_id(data)
            if pid in seen:  # the same bytes twice: keep the first, labels included
                duplicates += 1
                continue
            seen.add(pid)
            rel = f"{slug(piece.composer or piece.source) or 'unknown'}/{pid}.mid"
            (midi_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (midi_dir / rel).write_bytes(data)
            song_id = f"{piece.source}:{piece.song_id}"
            rows.append(
                {
                    "piece_id": pid,
                    "source": piece.source,
                    "path": rel,
                    "original": piece.name,
                    "song_id": song_id,
                    "official_split": piece.split,
                    "composer": piece.composer,
                    "genres": list(piece.genres),
                    "period": piece.period,
                    "emotion": piece.emotion,
                    "valence": piece.valence,
                    "arousal": piece.arousal,
                }
            )
            bar_rows.extend(
                {
                    "piece_id": pid,
                    "bar": b.bar,
                    "valence": b.valence,
                    "arousal": b.arousal,
                    "n_raters": b.n_raters,
                }
                for b in piece.bar_labels
            )
    return rows, bar_rows, {"duplicates": duplicates, "unreadable": unreadable}
