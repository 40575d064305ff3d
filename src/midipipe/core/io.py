"""Parquet and safetensors I/O with atomic writes: an interrupted stage leaves no half file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_UMASK = os.umask(0o022)
os.umask(_UMASK)
PART_NAME = re.compile(r"^part-\d{5,}\.parquet$")  # what `ShardWriter` writes


def part_files(folder: str | Path) -> list[Path]:
    """A folder's Parquet shards in order (none when the folder does not exist)."""
    return sorted(p for p in Path(folder).glob("part-*.parquet") if PART_NAME.match(p.name))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; give the file the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_table(path: str | Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_rows(path: str | Path, rows: list[dict], schema: pa.Schema) -> None:
    write_table(path, pa.Table.from_pylist(rows, schema=schema))


def iter_matching(
    paths: Iterable[str | Path],
    column: str,
    values: pa.Array | pa.ChunkedArray,
    columns: list[str] | None = None,
) -> Iterator[dict]:
    """Rows of Parquet files whose `column` is among `values`, file by file: the filter runs in
    Arrow, so no other row becomes a Python object."""
    if not len(values):
        return
    wanted = pc.field(column).isin(values)
    for path in paths:
        yield from pq.read_table(path, columns=columns, filters=wanted).to_pylist()


def _column(values: list, type_: pa.DataType) -> pa.Array:
    """Lists of numpy arrays (token ids from workers) become one Arrow list column without a
    Python loop over tokens; anything else goes through pyarrow's own conversion."""
    if pa.types.is_list(type_) and values and isinstance(values[0], np.ndarray):
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = np.concatenate(values).astype(type_.value_type.to_pandas_dtype(), copy=False)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.array(values, type=type_)


class ShardWriter:
    """Stream rows into `part-00000.parquet`, `part-00001.parquet`, ... of `rows_per_part` rows.

    Each part is written atomically when full, so memory holds at most one part and a crash
    leaves only complete parts behind.
    """

    def __init__(
        self, folder: str | Path, schema: pa.Schema, rows_per_part: int = 2048, first_part: int = 0
    ):
        self.folder = Path(folder)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.first_part = first_part  # parts already there (a resumed run appends after them)
        self.rows: list[dict] = []
        self.parts: list[Path] = []
        self.n_rows = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.n_rows += 1
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        path = self.folder / f"part-{self.first_part + len(self.parts):05d}.parquet"
        columns = [_column([r[f.name] for r in self.rows], f.type) for f in self.schema]
        write_table(path, pa.Table.from_arrays(columns, schema=self.schema))
        self.parts.append(path)
        self.rows = []

    def close(self) -> list[Path]:
        self.flush()
        if not self.parts and not self.first_part:  # an empty corpus still gets one empty part
            path = self.folder / "part-00000.parquet"
            write_rows(path, [], self.schema)
            self.parts.append(path)
        return self.parts

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
