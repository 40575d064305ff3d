"""Corpus-sized state on disk, for passes that must not hold a row per piece: a set of keys
(sqlite3, stdlib) and an external sort (sorted Parquet runs, merged by streaming). Both live
in a temporary folder that the caller owns."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.core.io import atomic_path


def connect(path: str | Path, schema: str) -> sqlite3.Connection:
    """A scratch sqlite3 database (no journal, no fsync: it dies with its run) with `schema`,
    inside one open transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; {schema}; BEGIN;")
    return db


class DiskSet:
    """Keys seen so far, in an sqlite3 file: memory is sqlite's page cache, not the keys."""

    def __init__(self, path: str | Path):
        self.db = connect(path, "CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, key: str) -> bool:
        """Record `key`; True if it was new."""
        return self.db.execute("INSERT OR IGNORE INTO keys VALUES (?)", (key,)).rowcount == 1

    def update(self, keys: Iterable[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO keys VALUES (?)", ((k,) for k in keys))

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM keys").fetchone()[0]

    def close(self) -> None:
        self.db.close()


SortKey = Callable[[pa.RecordBatch], np.ndarray]


def sorted_batches(
    batches: Iterable[pa.RecordBatch],
    key: SortKey,
    schema: pa.Schema,
    folder: str | Path,
    run_rows: int = 8192,
    merge_rows: int = 256,
    fan_in: int = 64,
) -> Iterator[pa.RecordBatch]:
    """`batches` in the order of `key` (one NumPy value per row, unique): runs of `run_rows`
    rows are sorted in memory and spilled to `folder`, merged `fan_in` at a time into longer
    runs while there are more, then merged as they are read. Memory, whatever the corpus size:
    one run while spilling, one row group of at most `fan_in` runs while merging (`merge_rows`
    rows of a first run, 16 x that of a merged one). The runs live in a folder of their own
    inside `folder`, removed when the sort ends or is abandoned."""
    own = Path(tempfile.mkdtemp(prefix="sort-", dir=folder))
    try:
        yield from _sort(batches, key, schema, own, run_rows, merge_rows, fan_in)
    finally:
        shutil.rmtree(own, ignore_errors=True)


def _sort(batches, key, schema, folder: Path, run_rows, merge_rows, fan_in) -> Iterator:
    names = (folder / f"run-{i:06d}.parquet" for i in itertools.count())
    runs: list[Path] = []
    pending: list[pa.RecordBatch] = []
    held = 0

    def spill() -> None:
        table = pa.Table.from_batches(pending, schema)
        runs.append(next(names))
        sorted_ = table.take(np.argsort(key(table), kind="stable"))
        pq.write_table(sorted_, runs[-1], row_group_size=merge_rows)
        pending.clear()

    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held >= run_rows:
            spill()
            held = 0
    if held:
        spill()
    while len(runs) > fan_in:
        group, runs = runs[:fan_in], runs[fan_in:]
        runs.append(next(names))
        with pq.ParquetWriter(runs[-1], schema) as out:  # groups of 16 * merge_rows: a
            # writer holds ~3 KB of footer per group until it closes, and these runs are long
            for merged in _batched(_merge(group, key, schema), 16 * merge_rows, schema):
                out.write_table(merged)
        for run in group:
            run.unlink()
    yield from _merge(runs, key, schema)


def _merge(runs: list[Path], key: SortKey, schema: pa.Schema) -> Iterator:
    """Merge sorted runs a slice at a time: every row up to the smallest of the runs' current
    last keys can go out (no later row sorts before it), sorted among themselves."""
    readers = [_row_groups(run) for run in runs]
    heads: dict[int, tuple[pa.RecordBatch, np.ndarray]] = {}
    for i, reader in enumerate(readers):
        _advance(heads, i, reader, key)
    while heads:
        bound = min(keys[-1] for _, keys in heads.values())
        parts, part_keys = [], []
        for i in list(heads):
            batch, keys = heads[i]
            cut = int(np.searchsorted(keys, bound, side="right"))
            parts.append(batch.slice(0, cut))
            part_keys.append(keys[:cut])
            if cut == len(keys):
                del heads[i]
                _advance(heads, i, readers[i], key)
            else:
                heads[i] = (batch.slice(cut), keys[cut:])
        table = pa.Table.from_batches(parts, schema)
        yield from table.take(np.argsort(np.concatenate(part_keys), kind="stable")).to_batches()


def _batched(batches: Iterator[pa.RecordBatch], rows: int, schema: pa.Schema) -> Iterator:
    """Tables of `rows` rows (the last one shorter) from batches of any size."""
    pending, held = [], 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held >= rows:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending, schema)


def _row_groups(path: Path) -> Iterator[pa.RecordBatch]:
    """A run a row group at a time (`iter_batches` reads ahead: a run wholly in memory)."""
    handle = pq.ParquetFile(path)
    for i in range(handle.num_row_groups):
        yield from handle.read_row_group(i).to_batches()


def _advance(heads: dict, i: int, reader: Iterator[pa.RecordBatch], key: SortKey) -> None:
    for batch in reader:
        if batch.num_rows:
            heads[i] = (batch, key(batch))
            return


def write_batches(
    path: str | Path,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    group_rows: int = 1 << 16,
) -> None:
    """A Parquet file, renamed into place when complete, from batches of any size in row groups
    of `group_rows`: the same bytes as `pq.write_table` of the whole table while it has at most
    one group's rows. Memory: one group."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as out:
        empty = True
        for table in _batched(iter(batches), group_rows, schema):
            out.write_table(table)
            empty = False
        if empty:  # an empty table is still written once, as `pq.write_table` does
            out.write_table(schema.empty_table())
