"""Token shards: the schemas of `data/tokens/*/part-*.parquet` and their readers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.core.io import part_files

TOKENS_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("bar_starts", pa.list_(pa.int32())),
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


def read_parts(folder: str | Path, columns: Iterable[str] | None = None) -> pa.Table:
    """All `part-*.parquet` of a folder as one table, in part order."""
    parts = part_files(folder)
    if not parts:
        raise FileNotFoundError(f"no part-*.parquet in {folder}")
    cols = list(columns) if columns is not None else None
    return pa.concat_tables([pq.read_table(p, columns=cols) for p in parts])


def iter_parts(folder: str | Path, columns: Iterable[str] | None = None) -> Iterator[dict]:
    """Rows of all parts, one part in memory at a time."""
    cols = list(columns) if columns is not None else None
    for part in part_files(folder):
        yield from pq.read_table(part, columns=cols).to_pylist()


def tokens_by_split(tokens_dir: str | Path, manifest: str | Path) -> dict[str, list[tuple]]:
    """Token rows grouped by the manifest's split: {split: [(piece_id, ids, bar_starts)]}."""
    split_of = dict(
        zip(
            *pq.read_table(manifest, columns=["piece_id", "split"]).to_pydict().values(),
            strict=True,
        )
    )
    out: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
    for row in iter_parts(tokens_dir):
        split = split_of.get(row["piece_id"])
        if split is not None:
            out[split].append((row["piece_id"], row["ids"], row["bar_starts"]))
    return out
