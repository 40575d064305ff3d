"""Where stage 10's songs come from: local GigaMIDI-schema Parquet read batch by batch, or the
hub's Parquet shards streamed with `datasets` (never the whole set in memory), as `Job`s."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from midipipe.annotate.params import AnnotateParams
from midipipe.core.errors import SourceError


def source_files(p: AnnotateParams) -> list[Path]:
    """Local Parquet files, checked for GigaMIDI's md5 and music columns."""
    from midipipe.data.sources.gigamidi import parquet_files

    return parquet_files(p.parquet, "annotate.parquet")


def source_identity(p: AnnotateParams) -> dict:
    if p.parquet is not None:
        return {"parquet": [[f.name, f.stat().st_size] for f in source_files(p)]}
    return {
        "hf_name": p.hf_name,
        "hf_config": p.hf_config,
        "revision": p.revision,
        "splits": list(p.splits),
    }


def _as_is(row: dict) -> dict:
    """DataLoader's collate for single rows: keep bytes and lists as they are."""
    return row


def _stream_split(p: AnnotateParams, split: str, wanted: list[str]) -> Iterable[dict]:
    """One split of the hub config, its Parquet shards read by `stream_workers` processes.

    `datasets` streams a config shard by shard (one file each); a torch DataLoader over the
    stream gives each worker its own shards and returns their rows round-robin, so the order
    is fixed for a given worker count and `limit` and resume stay exact."""
    import datasets

    try:
        stream = datasets.load_dataset(
            p.hf_name, p.hf_config, split=split, revision=p.revision, streaming=True
        )
    except Exception as error:  # offline, gated without a token, unknown config or split
        raise SourceError(
            f"annotate.hf_name: cannot stream {p.hf_name!r} (config "
            f"{p.hf_config!r}, split {split!r}): {error}"
        ) from None
    names = getattr(stream, "column_names", None)
    if names:  # decode only the columns we keep
        stream = stream.select_columns([c for c in dict.fromkeys(wanted) if c in names])
    workers = min(p.stream_workers, getattr(stream, "n_shards", 1))
    if workers <= 1:
        return stream
    from torch.utils.data import DataLoader

    return DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_as_is)


def open_rows(p: AnnotateParams, done: Set[str] = frozenset()) -> Iterator[dict]:
    """GigaMIDI rows as dicts (md5, music, metadata), read lazily: Parquet `read_batch` rows at
    a time, or the hub's splits streamed one after the other. A Parquet row group whose md5s
    are all `done` is not decoded: its rows come back as `{"md5": ...}` so positions still count
    (the hub stream cannot skip: a resumed run downloads done rows again, without parsing them).
    """
    wanted = ["md5", "music", *p.meta_columns]
    if p.parquet is not None:
        for path in source_files(p):
            handle = pq.ParquetFile(path)
            columns = [c for c in dict.fromkeys(wanted) if c in handle.schema_arrow.names]
            for group in range(handle.num_row_groups):
                if done:
                    md5s = handle.read_row_group(group, columns=["md5"]).column(0).to_pylist()
                    if all(m in done for m in md5s):
                        yield from ({"md5": m} for m in md5s)
                        continue
                batches = handle.iter_batches(p.read_batch, row_groups=[group], columns=columns)
                for batch in batches:
                    yield from batch.to_pylist()
        return
    for split in p.splits:
        yield from _stream_split(p, split, wanted)


@dataclass
class Job:
    """One song on its way to a worker; `missing` says why it cannot even be parsed."""

    key: str
    music: bytes | None
    missing: str | None
    meta: dict


def job_of(row: dict, meta_columns: Iterable[str]) -> Job:
    """A row's key is its md5 (GigaMIDI's), else the md5 of its bytes, else `row-` and a hash
    of its other fields (the same in every engine and on every run)."""
    music = row.get("music")
    music = bytes(music) if isinstance(music, bytes | bytearray | memoryview) else None
    md5 = row.get("md5")
    if md5:
        key = str(md5)
    elif music is not None:
        key = hashlib.md5(music).hexdigest()
    else:
        fields = repr(sorted((k, repr(v)) for k, v in row.items() if k != "music"))
        key = "row-" + hashlib.md5(fields.encode()).hexdigest()[:16]
    if "music" not in row:
        missing = "missing column 'music'"
    elif music is None:
        missing = f"no music bytes ({type(row['music']).__name__})"
    else:
        missing = None
    return Job(key, music, missing, {c: row[c] for c in meta_columns if c in row})
