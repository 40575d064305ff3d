"""Stage 00: gather every configured source into the corpus store (`data/corpus/`, see
`data/store.py`), the manifest that indexes it, bar labels and organize's rejects.

Bytes stream from the sources into shards as they are read; only per-piece metadata stays in
memory. The store persists between runs (dvc.yaml `persist: true`) and is its own cache: a
piece whose md5 is already in a shard is not parsed or written again, so adding files to a
source parses only the new ones, and an interrupted run resumes from the shards it completed.
A shard whose pieces left the sources or changed labels or split is rewritten (one shard in
memory); the manifest is rebuilt every run. Every source is validated before anything is read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import operator
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from midipipe.core.errors import BadMidi
from midipipe.core.io import part_files, write_json, write_rows, write_table
from midipipe.core.params import Params
from midipipe.data import spill, splits, store
from midipipe.data.midi import load_score, piece_id, stats
from midipipe.data.pool import Failure, robust_map
from midipipe.data.sources import iter_source

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("shard", pa.string()),  # data/corpus/<shard> holds the bytes ...
        ("row", pa.int64()),  # ... at this row
        ("split", pa.string()),
        *store.LABEL_FIELDS,
        ("n_notes", pa.int64()),
        ("n_tracks", pa.int32()),
        ("TPQN", pa.int64()),
        ("instrument", pa.int64()),  # GigaMIDI's instrument category
        *store.FACT_FIELDS,  # parse_error set: the file is kept but has no facts (a reject)
    ]
)
# what organize tracks per piece while it runs, beside the manifest's columns
_WORK_SCHEMA = (
    MANIFEST_SCHEMA.append(pa.field("official_split", pa.string()))
    .append(
        pa.field("stored_split", pa.string())  # the split its shard row has now
    )
    .append(pa.field("stale", pa.bool_()))
)  # its shard row has other labels
_LABELS = ("source", "original", "song_id", "composer", "genres", "period", "emotion")
_FACTS = ("n_notes", "n_bars", "duration_s", "n_tracks", "TPQN", "instrument", "parse_error")

BAR_VA_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("bar", pa.int32()),
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("n_raters", pa.int32()),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)


def facts(data: bytes) -> dict:
    """The manifest's facts of one file's bytes, or `parse_error`: why there are none."""
    try:
        s = stats(load_score(data))
    except BadMidi as exc:
        return {"parse_error": str(exc)}
    return {
        "n_notes": s.n_notes,
        "n_bars": s.n_bars,
        "duration_s": s.duration_s,
        "n_tracks": s.n_tracks,
        "TPQN": s.tpqn,
        "instrument": s.instrument,
    }


def _facts_of(item: tuple[dict, bytes]) -> dict:
    return facts(item[1])  # in a pool worker: the item's metadata stays in the parent


class _Rows:
    """Per-piece metadata, spilled in Arrow batches of 8192 rows to a temporary Parquet file as
    organize runs, so that memory holds one batch while the pool parses the corpus."""

    def __init__(self, folder: Path):
        self.path = folder / "rows.parquet"
        self.writer = pq.ParquetWriter(self.path, _WORK_SCHEMA)
        self.pending: list[dict] = []

    def add(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= 8192:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_batch(pa.RecordBatch.from_pylist(self.pending, schema=_WORK_SCHEMA))
            self.pending = []

    def close(self) -> Path:
        self._flush()
        self.writer.close()
        return self.path


class _Cache:
    """The shards already in the store: where each md5 lies (`store.Locations`: 44 bytes a
    piece, no Python object), each shard's row count, and their metadata read a row group at a
    time (bytes left on disk). Shards of another schema or facts version, and half-written
    temporaries, are removed."""

    def __init__(self, corpus: Path):
        for tmp in corpus.glob(".part-*.tmp"):
            tmp.unlink()
        self.sizes: dict[str, int] = {}
        self.next_part = 0
        keys, shards, rows = [np.empty(0, "S1")], [np.empty(0, np.int32)], [np.empty(0, np.int64)]
        for path in part_files(corpus):
            self.next_part = int(path.stem.split("-")[1]) + 1
            if not store.is_current(path):
                log.info("%s: other schema or version; its pieces are parsed again", path)
                path.unlink()
                continue
            md5 = pq.read_table(path, columns=["md5"])["md5"]
            keys.append(store.id_keys(md5))
            shards.append(np.full(len(md5), len(self.sizes), np.int32))
            rows.append(np.arange(len(md5)))
            self.sizes[path.name] = len(md5)
        self.where = store.Locations(
            np.concatenate(keys), list(self.sizes), np.concatenate(shards), np.concatenate(rows)
        )
        self.reader = store.Reader(corpus, groups=64, columns=store.META_COLUMNS)

    def meta(self, where: tuple[str, int]) -> dict:
        return store.meta_of(self.reader.row(*where))


def _same_labels(a: dict, b: dict) -> bool:
    f32 = [
        None if x.get(k) is None else float(np.float32(x[k]))
        for x in (a, b)
        for k in ("valence", "arousal")
    ]
    return f32[:2] == f32[2:] and all((a.get(k) or None) == (b.get(k) or None) for k in _LABELS)


def organize(params: Params, data_dir: str | Path = "data", metrics_path: str | Path | None = None):
    """Update `data_dir/corpus/`; write `manifest.parquet`, `labels/bar_va.parquet` and
    `organize_rejects.parquet` under `data_dir`."""
    data_dir = Path(data_dir)
    o = params.organize
    splits.check_fractions(o.valid_frac, o.test_frac)
    sources = [
        iter_source(spec, f"data.sources[{i}]") for i, spec in enumerate(params.data.sources)
    ]
    corpus = data_dir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    cache = _Cache(corpus)
    bar_rows, counts = [], Counter()
    writer = store.StoreWriter(corpus, cache.next_part, o.rows_per_file, o.rows_per_group)
    # spilled state beside the outputs, not in a /tmp that may be memory (tmpfs)
    with tempfile.TemporaryDirectory(prefix=".organize-", dir=data_dir) as tmp:
        tmp = Path(tmp)
        rows, seen = _Rows(tmp), spill.DiskSet(tmp / "seen.sqlite")
        new = _scan(sources, cache, rows, seen, bar_rows, counts, o)
        try:
            results = robust_map(_facts_of, new, o.workers, o.timeout_s, batch_size=16)
            for (meta, data), got in tqdm(results, desc="organize (new files)", unit="file"):
                meta.update({"parse_error": got.reason} if isinstance(got, Failure) else got)
                meta["shard"], meta["row"] = writer.add(store.store_row(meta, data))
                rows.add(meta)
                counts["parsed"] += 1
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            seen.close()
        settled, rewritten, conflicts = _settle(corpus, rows.close(), cache, o, tmp)
        found, rejects = _write_manifest(data_dir / "manifest.parquet", settled, tmp)
    if not part_files(corpus):  # no piece at all: one empty shard, so the output exists
        write_table(corpus / store.part_name(0), store.SCHEMA.empty_table())
    write_rows(data_dir / "labels" / "bar_va.parquet", bar_rows, BAR_VA_SCHEMA)
    write_rows(data_dir / "organize_rejects.parquet", rejects, REJECTS_SCHEMA)
    summary = {
        "pieces": found.pop("pieces"),
        "songs": found.pop("songs"),
        "bar_labels": len(bar_rows),
        "duplicates": counts["duplicates"],
        "unreadable": counts["unreadable"],
        "rejects": len(rejects),
        "parsed": counts["parsed"],  # new md5s this run; the others came from the store
        "reused": counts["reused"],
        "shards": len(part_files(corpus)),
        "shards_rewritten": rewritten,
        "split_conflicting_songs": len(conflicts),
        **found,  # pieces per split, then per source
    }
    if metrics_path:
        write_json(metrics_path, summary)
    log.info(
        "organized %d pieces from %d sources (%d parsed)",
        summary["pieces"],
        len(sources),
        counts["parsed"],
    )
    return summary


def _write_manifest(path: Path, settled: Path, tmp: Path) -> tuple[dict, list[dict]]:
    """Write the manifest sorted by piece id (an external sort: memory holds a run, not the
    corpus); return its counts (pieces, songs, per split, per source) and its rejects."""
    counts, sources, rejects = Counter(), Counter(), []
    songs = spill.DiskSet(tmp / "songs.sqlite")

    def tallied(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            songs.update(batch["song_id"].to_pylist())
            counts["pieces"] += batch.num_rows
            for c in pc.value_counts(batch["split"]).to_pylist():
                counts[f"split_{c['values']}"] += c["counts"]
            for c in pc.value_counts(batch["source"]).to_pylist():
                sources[c["values"]] += c["counts"]
            bad = batch.filter(pc.is_valid(batch["parse_error"]))
            rejects.extend(
                {
                    "piece_id": r["piece_id"],
                    "path": r["original"],
                    "stage": "organize",
                    "reason": r["parse_error"],
                }
                for r in bad.select(["piece_id", "original", "parse_error"]).to_pylist()
            )
            yield batch

    rows = pq.ParquetFile(settled).iter_batches(8192, columns=MANIFEST_SCHEMA.names)
    ordered = spill.sorted_batches(rows, _piece_key, MANIFEST_SCHEMA, tmp)
    with contextlib.closing(songs):
        spill.write_batches(path, tallied(ordered), MANIFEST_SCHEMA)
        summary = {"pieces": counts["pieces"], "songs": len(songs)}
    for split in splits.SPLITS:
        summary[f"split_{split}"] = counts[f"split_{split}"]
    for source, n in sorted(sources.items()):
        summary[f"source_{source}"] = n
    return summary, rejects


def _piece_key(batch) -> np.ndarray:
    return store.id_keys(batch["piece_id"])


def _scan(
    sources, cache: _Cache, rows: _Rows, seen: spill.DiskSet, bar_rows, counts, o
) -> Iterator:
    """Read every source once; yield `(metadata, bytes)` of each md5 the store lacks, record
    the others (with the store's facts) straight into `rows`. `seen`: the md5s read so far."""
    for pieces in sources:
        for piece in pieces:
            try:
                data = piece.read_bytes()
            except OSError as exc:
                counts["unreadable"] += 1
                log.warning("cannot read %s from source %s: %s", piece.name, piece.source, exc)
                continue
            pid = piece_id(data)
            if not seen.add(pid):  # the same bytes twice: keep the first, labels included
                counts["duplicates"] += 1
                continue
            song_id = f"{piece.source}:{piece.song_id}"
            provisional = piece.split or splits.assign(song_id, o.seed, o.valid_frac, o.test_frac)
            meta = {
                "piece_id": pid,
                "source": piece.source,
                "original": piece.name,
                "song_id": song_id,
                "official_split": piece.split,
                "split": provisional,
                "stored_split": provisional,
                "stale": False,
                "composer": piece.composer,
                "genres": list(piece.genres),
                "period": piece.period,
                "emotion": piece.emotion,
                "valence": piece.valence,
                "arousal": piece.arousal,
            }
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
            where = cache.where.find(pid)
            if where is None:
                yield meta, data
                continue
            counts["reused"] += 1
            cached = cache.meta(where)
            meta.update({k: cached[k] for k in _FACTS})
            meta["shard"], meta["row"] = where
            meta["stored_split"] = cached["split"]
            meta["stale"] = not _same_labels(meta, cached)
            rows.add(meta)


def _settle(corpus: Path, rows: Path, cache: _Cache, o, tmp: Path) -> tuple[Path, int, list]:
    """Final splits (one per song), then rewrite every shard whose rows differ from the final
    metadata or hold pieces no source has now; returns a Parquet file of the final rows. Reads
    `rows` in batches: memory holds a batch and one shard (songs' official splits: sqlite)."""
    work = pq.ParquetFile(rows)

    def batches(columns=None) -> Iterator[pa.RecordBatch]:
        for batch in work.iter_batches(8192, columns=columns):
            yield _final_split(batch, official) if official.songs else batch

    with contextlib.closing(_Official(tmp / "official.sqlite")) as official:
        for b in work.iter_batches(8192, columns=["song_id", "official_split"]):
            b = b.filter(pc.is_valid(b["official_split"]))
            official.vote(zip(*b.to_pydict().values(), strict=True))
        conflicts = official.settle()
        used, dirty = Counter(), set()
        for b in batches(["shard", "song_id", "split", "stored_split", "stale"]):
            changed = pc.or_(b["stale"], pc.not_equal(b["split"], b["stored_split"]))
            dirty.update(pc.unique(b["shard"].filter(changed)).to_pylist())
            used.update({c["values"]: c["counts"] for c in pc.value_counts(b["shard"]).to_pylist()})
        dirty |= {s for s, n in cache.sizes.items() if used.get(s, 0) < n}
        names = pa.array(sorted(dirty), pa.string())
        settled = tmp / "settled.parquet"
        with pq.ParquetWriter(settled, _WORK_SCHEMA) as out:
            for b in batches():  # rows of clean shards stay as they are
                keep = b.filter(pc.invert(pc.is_in(b["shard"], names)))
                if keep.num_rows:
                    out.write_batch(keep)
            if not dirty:
                return settled, 0, conflicts
            dirty_rows = (b.filter(pc.is_in(b["shard"], names)) for b in batches())
            place = spill.sorted_batches(dirty_rows, _place_key(names), _WORK_SCHEMA, tmp)
            done = set()
            progress = tqdm(total=len(dirty), desc="organize (rewrite shards)", unit="shard")
            for shard, group in _by_shard(place, names):
                store.rewrite(
                    corpus / shard, group["row"].to_pylist(), group.to_pylist(), o.rows_per_group
                )
                at = group.schema.get_field_index("row")
                out.write_table(
                    group.set_column(at, "row", pa.array(range(group.num_rows), pa.int64()))
                )
                done.add(shard)
                progress.update()
            for shard in dirty - done:  # every piece of the shard left the sources
                store.rewrite(corpus / shard, [], [], o.rows_per_group)
                progress.update()
            progress.close()
        log.info("rewrote %d shards (pieces removed, or labels or splits changed)", len(dirty))
        return settled, len(dirty), conflicts


def _final_split(batch: pa.RecordBatch, official: _Official) -> pa.RecordBatch:
    """A song's clips follow the song's official split; other pieces keep their own."""
    songs, own = batch["song_id"].to_pylist(), batch["split"].to_pylist()
    chosen = official.of(set(songs))
    final = pa.array(map(chosen.get, songs, own), pa.string())
    return batch.set_column(batch.schema.get_field_index("split"), "split", final)


class _Official:
    """Songs' official splits, voted by their clips (`splits.choose`), in sqlite: a corpus whose
    every piece has an official split (GigaMIDI) holds no dict of its songs."""

    def __init__(self, path: Path):
        self.db = spill.connect(
            path,
            "CREATE TABLE votes (song TEXT, split TEXT, n INTEGER, PRIMARY KEY (song, split))"
            " WITHOUT ROWID; CREATE TABLE chosen (song TEXT PRIMARY KEY, split TEXT) WITHOUT ROWID",
        )
        self.songs = 0

    def close(self) -> None:
        self.db.close()

    def vote(self, pieces: Iterable[tuple[str, str]]) -> None:
        self.db.executemany(
            "INSERT INTO votes VALUES (?, ?, 1) ON CONFLICT DO UPDATE SET n = n + 1", pieces
        )

    def settle(self) -> list[str]:
        """Choose every song's split; returns the songs whose clips disagree."""
        conflicts = []
        rows = self.db.execute("SELECT song, split, n FROM votes ORDER BY song")
        for song, group in itertools.groupby(rows, key=operator.itemgetter(0)):
            votes = {split: n for _, split, n in group}
            self.db.execute("INSERT INTO chosen VALUES (?, ?)", (song, splits.choose(song, votes)))
            self.songs += 1
            if len(votes) > 1:
                conflicts.append(song)
        return conflicts

    def of(self, songs: Iterable[str]) -> dict[str, str]:
        """The chosen split of those of `songs` that have one."""
        query = "SELECT song, split FROM chosen WHERE song IN (SELECT value FROM json_each(?))"
        return dict(self.db.execute(query, (json.dumps(list(songs)),)))


def _place_key(names: pa.Array) -> spill.SortKey:
    """Sort key of rows by shard (its index in `names`) then row: one uint64 a row."""

    def key(batch) -> np.ndarray:
        shard = pc.index_in(batch["shard"], value_set=names).to_numpy(zero_copy_only=False)
        return (shard.astype(np.uint64) << np.uint64(32)) | batch["row"].to_numpy().astype(
            np.uint64
        )

    return key


def _by_shard(batches: Iterator[pa.RecordBatch], names: pa.Array) -> Iterator[tuple[str, pa.Table]]:
    """Rows sorted by `_place_key`, one shard's rows at a time."""
    held, current = [], None
    for batch in batches:
        index = pc.index_in(batch["shard"], value_set=names).to_numpy(zero_copy_only=False)
        cuts = [0, *(np.flatnonzero(np.diff(index)) + 1).tolist(), len(index)]
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            if index[lo] != current and held:
                yield names[current].as_py(), pa.Table.from_batches(held)
                held = []
            current = index[lo]
            held.append(batch.slice(lo, hi - lo))
    if held:
        yield names[current].as_py(), pa.Table.from_batches(held)
