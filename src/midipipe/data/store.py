"""The corpus store: `data/corpus/part-NNNNN.parquet`, every piece's bytes and labels in a few
hundred Parquet shards in GigaMIDI's schema (so stages 10-11 read it as they read GigaMIDI).

Columns: GigaMIDI's (split in its naming, md5 = piece_id, music bytes, num_tracks, TPQN,
total_notes, instrument category, styles, title, artist), then the labels and facts the
manifest keeps. `data/manifest.parquet` is the small index (no bytes): each piece's `shard` and
`row` locate its bytes here. Shards hold small row groups, so one piece is read without its
whole shard; this module is the one place that reads them.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from midipipe.core.errors import SourceError
from midipipe.core.io import PART_NAME, atomic_path, part_files

INSTRUMENT_COLUMN = "instrument_category__drums-only__0__all-instruments-with-drums__1_no-drums__2"
VERSION = b"1"  # bump when the facts computed from the bytes change: cached rows are re-parsed
_META = {b"midipipe.store": VERSION}

GIGAMIDI_FIELDS = [
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
LABEL_FIELDS = [
    ("source", pa.string()),
    ("original", pa.string()),  # the file's name in its source
    ("song_id", pa.string()),
    ("composer", pa.string()),
    ("genres", pa.list_(pa.string())),
    ("period", pa.string()),
    ("emotion", pa.string()),
    ("valence", pa.float32()),
    ("arousal", pa.float32()),
]
FACT_FIELDS = [
    ("n_bars", pa.int64()),
    ("duration_s", pa.float32()),
    ("parse_error", pa.string()),  # why the file has no facts (it stays in the store)
]
SCHEMA = pa.schema(GIGAMIDI_FIELDS + LABEL_FIELDS + FACT_FIELDS, metadata=_META)
META_COLUMNS = [name for name in SCHEMA.names if name != "music"]  # everything but the bytes
SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # ours -> GigaMIDI's
OUR_SPLIT = {v: k for k, v in SPLITS.items()}


def store_row(meta: dict, music: bytes) -> dict:
    """One shard row from a manifest-style row (`piece_id`, `split`, labels, facts) and bytes."""
    return {
        "split": SPLITS.get(meta.get("split") or "", meta.get("split")),
        "md5": meta["piece_id"],
        "music": music,
        "num_tracks": meta.get("n_tracks"),
        "TPQN": meta.get("TPQN"),
        "total_notes": meta.get("n_notes"),
        INSTRUMENT_COLUMN: meta.get("instrument"),
        "music_styles_curated": list(meta.get("genres") or []),
        "music_style_scraped": meta.get("period") or "",
        "music_style_audio_text_Discogs": [],
        "music_style_audio_text_Lastfm": [],
        "music_style_audio_text_Tagtraum": [],
        "title": Path(meta.get("original") or meta["piece_id"]).stem,
        "artist": meta.get("composer") or "",
        **{name: meta.get(name) for name, _ in LABEL_FIELDS + FACT_FIELDS},
    }


def meta_of(row: dict) -> dict:
    """The manifest-style row of a shard row (the inverse of `store_row`, bytes left out)."""
    return {
        "piece_id": row["md5"],
        "split": OUR_SPLIT.get(row["split"], row["split"]),
        "n_notes": row["total_notes"],
        "n_tracks": row["num_tracks"],
        "TPQN": row["TPQN"],
        "instrument": row[INSTRUMENT_COLUMN],
        **{name: row[name] for name, _ in LABEL_FIELDS + FACT_FIELDS},
    }


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def part_path(folder: str | Path, shard: str) -> Path:
    """A shard's file; a name from a manifest that is not `part-NNNNN.parquet` is refused, so
    no path can leave the store."""
    if not isinstance(shard, str) or not PART_NAME.match(shard):
        raise SourceError(f"{folder}: not a corpus shard name: {shard!r}")
    return Path(folder) / shard


def is_current(path: Path) -> bool:
    """A shard written with this schema and facts version (else its rows must be rebuilt)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        return False
    return (schema.metadata or {}).get(
        b"midipipe.store"
    ) == VERSION and schema.remove_metadata().equals(SCHEMA.remove_metadata())


def iter_batches(
    folder: str | Path, columns: Sequence[str] | None = None, batch_size: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Every shard's rows in batches of the chosen columns; one batch in memory at a time."""
    for path in part_files(folder):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def count(folder: str | Path) -> int:
    """Rows in the store, from the shards' footers."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in part_files(folder))


def column(folder: str | Path, name: str) -> pa.Array:
    """One column of every shard, in store order, as one Arrow array (bytes, not objects)."""
    tables = (pq.read_table(path, columns=[name]) for path in part_files(folder))
    chunks = [c for table in tables for c in table[0].chunks]
    return pa.chunked_array(chunks, SCHEMA.field(name).type).combine_chunks()


class Reader:
    """Rows by `(shard, row)`: reads the row group that holds a row (its `columns` only) and
    keeps the last few, so locations in store order read each row group once."""

    def __init__(self, folder: str | Path, groups: int = 8, columns: Sequence[str] = ("music",)):
        self.folder = Path(folder)
        self.groups = groups
        self.columns = list(columns)
        self._files: dict[str, tuple[pq.ParquetFile, list[int]]] = {}
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()

    def _file(self, shard: str) -> tuple[pq.ParquetFile, list[int]]:
        if shard not in self._files:
            if len(self._files) >= 8:  # a few open shards, not one handle per shard
                self._files.pop(next(iter(self._files)))
            handle = pq.ParquetFile(part_path(self.folder, shard))
            meta = handle.metadata
            starts = [0]
            for i in range(meta.num_row_groups):
                starts.append(starts[-1] + meta.row_group(i).num_rows)
            self._files[shard] = (handle, starts)
        return self._files[shard]

    def _group(self, shard: str, row: int) -> tuple[pa.Table, int]:
        """The row group holding `row`, and the row's index in it."""
        handle, starts = self._file(shard)
        if not 0 <= row < starts[-1]:
            raise SourceError(f"{self.folder / shard}: no row {row} ({starts[-1]} rows)")
        group = bisect.bisect_right(starts, row) - 1
        key = (shard, group)
        if key in self._groups:
            self._groups.move_to_end(key)
        else:
            if len(self._groups) >= self.groups:
                self._groups.popitem(last=False)
            self._groups[key] = handle.read_row_group(group, columns=self.columns)
        return self._groups[key], row - starts[group]

    def music(self, shard: str, row: int) -> bytes:
        table, i = self._group(shard, row)
        return table.column("music")[i].as_py()

    def row(self, shard: str, row: int) -> dict:
        """One row's `columns` as a dict."""
        table, i = self._group(shard, row)
        return table.slice(i, 1).to_pylist()[0]


def read_music(folder: str | Path, locations: Iterable[tuple[str, int]]) -> Iterator[bytes]:
    """The bytes at each `(shard, row)`, in the order given (store order reads least)."""
    reader = Reader(folder)
    for shard, row in locations:
        yield reader.music(shard, row)


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Piece ids as a fixed-width bytes NumPy array, sortable and searchable: md5s (all one
    width) are cast in Arrow, 32 bytes a piece and no Python object per piece."""
    if not len(ids):
        return np.empty(0, "S1")
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    lengths = pc.binary_length(ids)
    width = max(1, pc.max(lengths).as_py())
    if pc.min(lengths).as_py() < width:  # ids of mixed widths (tests, hand-made manifests)
        return np.array([pid.encode() for pid in ids.to_pylist()], f"S{width}")
    fixed = pc.cast(ids, pa.binary(width))
    return np.frombuffer(fixed.buffers()[1], f"S{width}", len(fixed), fixed.offset * width).copy()


def contains(sorted_keys: np.ndarray, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which of `ids` are among `sorted_keys` (`id_keys`, sorted): a binary search per id, so a
    batch costs O(batch log n), not a hash table of all n rebuilt for every batch."""
    keys = id_keys(ids)
    if not len(sorted_keys) or not len(keys):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


class Locations:
    """Where pieces lie, `(shard, row)` by piece id, for a corpus of any size: sorted id keys,
    a shard number and a row per piece (44 bytes a piece with md5 ids). An id stored twice is
    found at its first location given."""

    def __init__(self, keys: np.ndarray, shards: list[str], shard: np.ndarray, row: np.ndarray):
        order = np.argsort(keys, kind="stable")  # a second copy sorts after the first
        self.keys, self.shards = keys[order], sorted(shards)  # shard numbers in name order
        rank = np.array([self.shards.index(name) for name in shards], np.int32)
        self.shard, self.row = rank[shard[order]], row[order].astype(np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, piece_id: str) -> tuple[str, int] | None:
        key = piece_id.encode()
        i = int(np.searchsorted(self.keys, key))
        if i == len(self.keys) or self.keys[i] != key:
            return None
        return self.shards[self.shard[i]], int(self.row[i])

    def __getitem__(self, piece_id: str) -> tuple[str, int]:
        found = self.find(piece_id)
        if found is None:
            raise KeyError(piece_id)
        return found

    def ids(self) -> Iterator[str]:
        """Every piece id, sorted."""
        return (key.decode() for key in self.keys)

    def store_order(self, piece_ids: Iterable[str] | None = None) -> list[str]:
        """Piece ids (all by default) sorted by where they lie: the cheapest order to read."""
        if piece_ids is None:
            return [self.keys[i].decode() for i in np.lexsort((self.row, self.shard))]
        return sorted(piece_ids, key=self.__getitem__)


class Corpus:
    """The organized corpus by piece id: the manifest's locations and the shards' bytes."""

    def __init__(
        self, folder: str | Path = "data/corpus", manifest: str | Path = "data/manifest.parquet"
    ):
        table = pq.read_table(manifest, columns=["piece_id", "shard", "row"])
        shard = table["shard"].combine_chunks().dictionary_encode()
        self.where = Locations(
            id_keys(table["piece_id"]),
            shard.dictionary.to_pylist(),
            shard.indices.to_numpy(zero_copy_only=False),
            table["row"].to_numpy(),
        )
        self.reader = Reader(folder)

    def music(self, piece_id: str) -> bytes:
        return self.reader.music(*self.where[piece_id])

    def in_store_order(self, piece_ids: Iterable[str] | None = None) -> list[str]:
        """Piece ids (all by default) sorted by where they lie: the cheapest order to read."""
        return self.where.store_order(piece_ids)

    def iter_music(self, piece_ids: Iterable[str]) -> Iterator[bytes]:
        for pid in piece_ids:
            yield self.music(pid)

    def lazy(self, piece_ids: Sequence[str]) -> Sequence[bytes]:
        """The pieces' bytes as a sequence read on access: one piece in memory at a time."""
        return _Lazy(self, list(piece_ids))


class _Lazy(Sequence):
    """Feature loops take sequences of files; this one reads each piece when it is reached."""

    def __init__(self, corpus: Corpus, piece_ids: list[str]):
        self.corpus, self.piece_ids = corpus, piece_ids

    def __len__(self) -> int:
        return len(self.piece_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _Lazy(self.corpus, self.piece_ids[i])
        return self.corpus.music(self.piece_ids[i])


class StoreWriter:
    """Append rows to `part-NNNNN.parquet` files of `rows_per_file` rows, written row group by
    row group (memory holds one group's bytes), each file renamed into place when complete."""

    def __init__(self, folder: str | Path, first: int, rows_per_file: int, rows_per_group: int):
        self.folder = Path(folder)
        self.next = first
        self.rows_per_file = rows_per_file
        self.rows_per_group = rows_per_group
        self.group: list[dict] = []
        self.in_file = 0
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def add(self, row: dict) -> tuple[str, int]:
        """Queue one row; returns the shard and row it will have."""
        if self._writer is None:
            self._stack = contextlib.ExitStack()
            tmp = self._stack.enter_context(atomic_path(self.folder / part_name(self.next)))
            self._writer = self._stack.enter_context(pq.ParquetWriter(tmp, SCHEMA))
        where = (part_name(self.next), self.in_file)
        self.group.append(row)
        self.in_file += 1
        if len(self.group) >= self.rows_per_group:
            self._flush_group()
        if self.in_file >= self.rows_per_file:
            self.close()
        return where

    def _flush_group(self) -> None:
        if self.group:
            self._writer.write_table(pa.Table.from_pylist(self.group, schema=SCHEMA))
            self.group = []

    def close(self) -> None:
        """Finish the open file (renamed into place)."""
        if self._writer is None:
            return
        self._flush_group()
        self._stack.close()  # closes the Parquet writer, then renames the file
        self._writer = self._stack = None
        self.next += 1
        self.in_file = 0

    def abort(self) -> None:
        """Drop the open file (an error stopped the run): nothing half-written remains."""
        if self._stack is not None:
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._writer = self._stack = None


def rewrite(path: Path, keep: Sequence[int], metas: Sequence[dict], rows_per_group: int) -> None:
    """Rewrite one shard with rows `keep` (in that order) under new metadata `metas`; memory
    holds that one shard. An empty `keep` removes the file."""
    if not keep:
        path.unlink()
        return
    music = pq.read_table(path, columns=["music"]).column(0)
    rows = [store_row(meta, music[i].as_py()) for i, meta in zip(keep, metas, strict=True)]
    with atomic_path(path) as tmp:
        pq.write_table(
            pa.Table.from_pylist(rows, schema=SCHEMA), tmp, row_group_size=rows_per_group
        )
