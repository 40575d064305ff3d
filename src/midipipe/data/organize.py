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

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from midipipe.core.errors import BadMidi
from midipipe.core.io import write_json, write_rows, write_table
from midipipe.core.params import Params
from midipipe.data import splits, store
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

    def table(self) -> pa.Table:
        self._flush()
        self.writer.close()
        return pq.read_table(self.path, schema=_WORK_SCHEMA)


class _Cache:
    """The shards already in the store: their metadata as Arrow tables (bytes left on disk)
    and where each md5 lies (`store.Locations`: no Python object per piece). Shards of another
    schema or facts version, and half-written temporaries, are removed."""

    def __init__(self, corpus: Path):
        for tmp in corpus.glob(".part-*.tmp"):
            tmp.unlink()
        self.tables: dict[str, pa.Table] = {}
        self.next_part = 0
        keys, shards, rows = [np.empty(0, "S1")], [np.empty(0, np.int32)], [np.empty(0, np.int64)]
        for path in store.parts(corpus):
            self.next_part = int(path.stem.split("-")[1]) + 1
            if not store.is_current(path):
                log.info("%s: other schema or version; its pieces are parsed again", path)
                path.unlink()
                continue
            table = pq.read_table(path, columns=store.META_COLUMNS)
            keys.append(store.id_keys(table["md5"]))
            shards.append(np.full(table.num_rows, len(self.tables), np.int32))
            rows.append(np.arange(table.num_rows))
            self.tables[path.name] = table
        self.where = store.Locations(
            np.concatenate(keys), list(self.tables), np.concatenate(shards), np.concatenate(rows)
        )

    def meta(self, where: tuple[str, int]) -> dict:
        shard, row = where
        return store.meta_of(self.tables[shard].slice(row, 1).to_pylist()[0])


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
    with tempfile.TemporaryDirectory(prefix="midipipe-organize-") as tmp:
        rows = _Rows(Path(tmp))
        new = _scan(sources, cache, rows, bar_rows, counts, o)
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
        table = rows.table()
    table, rewritten, conflicts = _settle(corpus, table, cache, o)
    if not store.parts(corpus):  # no piece at all: one empty shard, so the output exists
        write_table(corpus / store.part_name(0), store.SCHEMA.empty_table())
    table = table.select(MANIFEST_SCHEMA.names).sort_by("piece_id")
    write_table(data_dir / "manifest.parquet", table.cast(MANIFEST_SCHEMA))
    write_rows(data_dir / "labels" / "bar_va.parquet", bar_rows, BAR_VA_SCHEMA)
    rejects = table.filter(pc.is_valid(table["parse_error"]))
    write_rows(
        data_dir / "organize_rejects.parquet",
        [
            {
                "piece_id": r["piece_id"],
                "path": r["original"],
                "stage": "organize",
                "reason": r["parse_error"],
            }
            for r in rejects.select(["piece_id", "original", "parse_error"]).to_pylist()
        ],
        REJECTS_SCHEMA,
    )
    summary = {
        "pieces": table.num_rows,
        "songs": pc.count_distinct(table["song_id"]).as_py(),
        "bar_labels": len(bar_rows),
        "duplicates": counts["duplicates"],
        "unreadable": counts["unreadable"],
        "rejects": rejects.num_rows,
        "parsed": counts["parsed"],  # new md5s this run; the others came from the store
        "reused": counts["reused"],
        "shards": len(store.parts(corpus)),
        "shards_rewritten": rewritten,
        "split_conflicting_songs": len(conflicts),
    }
    for split in splits.SPLITS:
        summary[f"split_{split}"] = pc.sum(pc.equal(table["split"], split)).as_py() or 0
    sources_n = pc.value_counts(table["source"]).to_pylist()
    for source, n in sorted((c["values"], c["counts"]) for c in sources_n):
        summary[f"source_{source}"] = n
    if metrics_path:
        write_json(metrics_path, summary)
    log.info(
        "organized %d pieces from %d sources (%d parsed)",
        table.num_rows,
        len(sources),
        counts["parsed"],
    )
    return summary


def _scan(sources, cache: _Cache, rows: _Rows, bar_rows: list, counts: Counter, o) -> Iterator:
    """Read every source once; yield `(metadata, bytes)` of each md5 the store lacks, record
    the others (with the store's facts) straight into `rows`."""
    seen: set[str] = set()
    for pieces in sources:
        for piece in pieces:
            try:
                data = piece.read_bytes()
            except OSError as exc:
                counts["unreadable"] += 1
                log.warning("cannot read %s from source %s: %s", piece.name, piece.source, exc)
                continue
            pid = piece_id(data)
            if pid in seen:  # the same bytes twice: keep the first, labels included
                counts["duplicates"] += 1
                continue
            seen.add(pid)
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


def _settle(corpus: Path, table: pa.Table, cache: _Cache, o) -> tuple[pa.Table, int, list[str]]:
    """Final splits (one per song), then rewrite every shard whose rows differ from the final
    metadata or hold pieces no source has now; returns the table with final rows. Works on
    Arrow columns: Python objects only for the songs with official splits and one shard."""
    official = table.filter(pc.is_valid(table["official_split"]))
    chosen, conflicts = splits.official_choice(
        zip(official["song_id"].to_pylist(), official["official_split"].to_pylist(), strict=True)
    )
    final = table["split"]  # each piece's own: its official split, else its song's draw
    if chosen:  # a song's clips follow the song's official split
        batches = table.select(["song_id", "split"]).to_batches(max_chunksize=8192)
        final = pa.chunked_array(
            [pa.array(map(chosen.get, *b.to_pydict().values()), pa.string()) for b in batches],
            pa.string(),
        )
        table = table.set_column(table.schema.get_field_index("split"), "split", final)
    changed = pc.or_(table["stale"], pc.not_equal(final, table["stored_split"]))
    dirty = set(pc.unique(table["shard"].filter(changed)).to_pylist())
    used = {c["values"]: c["counts"] for c in pc.value_counts(table["shard"]).to_pylist()}
    dirty |= {s for s, t in cache.tables.items() if used.get(s, 0) < t.num_rows}
    row = table["row"].to_numpy().copy()
    # the pieces grouped by shard, in row order, in one pass (not a scan per dirty shard)
    codes = table["shard"].combine_chunks().dictionary_encode()
    shard_of = codes.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((row, shard_of))
    bounds = np.searchsorted(shard_of[order], np.arange(len(codes.dictionary) + 1))
    code = {s: c for c, s in enumerate(codes.dictionary.to_pylist())}
    for s in tqdm(sorted(dirty), desc="organize (rewrite shards)", unit="shard", disable=not dirty):
        c = code.get(s)  # None: every piece of the shard left the sources
        idx = order[bounds[c] : bounds[c + 1]] if c is not None else order[:0]
        store.rewrite(corpus / s, row[idx].tolist(), table.take(idx).to_pylist(), o.rows_per_group)
        row[idx] = np.arange(len(idx))
    if dirty:
        log.info("rewrote %d shards (pieces removed, or labels or splits changed)", len(dirty))
    table = table.set_column(table.schema.get_field_index("row"), "row", pa.array(row, pa.int64()))
    return table, len(dirty), conflicts
