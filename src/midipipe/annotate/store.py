"""Stage 10's output folder and its resume protocol.

Output folder (`data/annotations/<name>/`):
  part-NNNNN.parquet           one row per bar of the ok songs of one chunk (BAR_SCHEMA)
  progress/part-NNNNN.parquet  one summary row per song the chunk covers, failed ones included,
                               plus the row's metadata columns (styles, artist...) for stage 11
  songs.parquet                all summaries (SONG_SCHEMA), rebuilt at the end of every run
  meta.parquet                 md5 + metadata columns, rebuilt at the end of every run
  run.json                     fingerprint (code, params, models, source), counts, stream error

Resume: a chunk is committed by writing its bars part, then its progress file, each atomically;
the progress file is the commit record. On start, a bars part without a progress file (killed
between the two writes) is deleted, every md5 in a progress file is skipped, and numbering goes
on. A different fingerprint (other code, params, models or source) starts afresh, naming what
changed, rather than mix annotations. A song that failed for a transient reason (timed out, its
worker killed) is retried once by the next run; its newer summary row replaces the older one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.annotate.annotator import SongResult
from midipipe.core.io import atomic_path, write_json, write_table

log = logging.getLogger(__name__)

BAR_SCHEMA = pa.schema(
    [
        ("md5", pa.string()),
        ("bar", pa.int32()),
        ("start_tick", pa.int64()),  # in the file's own ticks
        ("end_tick", pa.int64()),
        ("start_s", pa.float32()),  # following every tempo change
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("estimator", pa.string()),
    ]
)
STATS = ("mean", "std", "min", "max")
SONG_SCHEMA = pa.schema(
    [
        ("md5", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("estimator", pa.string()),
        ("fallback", pa.string()),  # why some or all bars are the fallback estimator's
        ("n_bars", pa.int32()),
        ("bars_fallback", pa.int32()),
        ("bars_truncated", pa.int32()),
        ("attempts", pa.int32()),
    ]
    + [(f"{axis}_{s}", pa.float32()) for axis in ("valence", "arousal") for s in STATS]
)
OK, FAILED = "ok", "failed"
TRANSIENT = ("Timeout", "WorkerCrash")  # failure kinds a later run retries (once)
MAX_ATTEMPTS = 2


def reason_kind(reason: str) -> str:
    """The exception type of a failure reason ("BadMidi: no notes" -> BadMidi)."""
    if reason.startswith("timed out"):
        return "Timeout"
    if reason.startswith("worker crashed"):
        return "WorkerCrash"
    return reason.split(":")[0]


def summary_row(r: SongResult, attempts: int) -> dict:
    row = {
        "md5": r.key,
        "status": OK if r.reason is None else FAILED,
        "reason": r.reason,
        "estimator": r.estimator or None,
        "fallback": r.fallback,
        "n_bars": 0,
        "bars_fallback": 0,
        "bars_truncated": r.n_truncated,
        "attempts": attempts,
    }
    if r.reason is None:
        row["n_bars"] = len(r.va)
        row["bars_fallback"] = r.n_fallback_bars()
        for k, axis in enumerate(("valence", "arousal")):
            v = r.va[:, k].astype(np.float64)
            row.update(
                {
                    f"{axis}_mean": v.mean(),
                    f"{axis}_std": v.std(),
                    f"{axis}_min": v.min(),
                    f"{axis}_max": v.max(),
                }
            )
    return row


def bars_table(results: list[SongResult]) -> pa.Table:
    ok = [r for r in results if r.reason is None]
    if not ok:
        return BAR_SCHEMA.empty_table()
    lengths = [len(r.va) for r in ok]
    va = np.concatenate([r.va for r in ok])
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat([r.key for r in ok], lengths).tolist(), pa.string()),
            pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])),
            pa.array(np.concatenate([np.round(r.bounds[:-1]) for r in ok]).astype(np.int64)),
            pa.array(np.concatenate([np.round(r.bounds[1:]) for r in ok]).astype(np.int64)),
            pa.array(np.concatenate([r.start_s for r in ok]).astype(np.float32)),
            pa.array(va[:, 0].astype(np.float32)),
            pa.array(va[:, 1].astype(np.float32)),
            pa.array(np.concatenate([r.bar_estimators() for r in ok]).tolist(), pa.string()),
        ],
        schema=BAR_SCHEMA,
    )


def _part_index(path: Path) -> int:
    return int(path.stem.split("-")[1])


def changed_keys(old: dict, new: dict) -> list[str]:
    """Top-level fingerprint keys that differ (params are listed one by one)."""
    keys = []
    for k in sorted(set(old) | set(new)):
        if k == "params" and isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
            keys += [f"params.{q}" for q in changed_keys(old[k], new[k])]
        elif old.get(k) != new.get(k):
            keys.append(k)
    return keys


class PartStore:
    """The output folder: commits chunks atomically, knows which songs are done."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.progress = self.folder / "progress"
        self.restarted: list[str] = []  # fingerprint keys that changed (started afresh)
        state_path = self.folder / "run.json"
        if state_path.exists():
            old = json.loads(state_path.read_text()).get("fingerprint") or {}
            if old != fingerprint:
                self.restarted = changed_keys(old, fingerprint)
                log.warning(
                    "%s was annotated with other %s: starting afresh",
                    self.folder,
                    ", ".join(self.restarted),
                )
                shutil.rmtree(self.folder)
        self.progress.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        for tmp in [*self.folder.glob(".*.tmp"), *self.progress.glob(".*.tmp")]:
            tmp.unlink()  # left by a kill during an atomic write
        committed = {p.name for p in self.progress.glob("part-*.parquet")}
        for part in self.folder.glob("part-*.parquet"):
            if part.name not in committed:  # bars written, commit record not: redo the chunk
                log.info("removing uncommitted %s", part.name)
                part.unlink()
        self.done: set[str] = set()
        self.retry: dict[str, int] = {}  # md5 -> attempts so far, for transient failures
        indices = [-1]
        for path in sorted(self.progress.glob("part-*.parquet")):
            table = pq.read_table(path)
            attempts = (
                table.column("attempts").to_pylist()
                if "attempts" in table.column_names
                else [1] * table.num_rows
            )
            for md5, reason, n in zip(
                table.column("md5").to_pylist(),
                table.column("reason").to_pylist(),
                attempts,
                strict=True,
            ):
                if reason and reason_kind(reason) in TRANSIENT and n < MAX_ATTEMPTS:
                    self.retry[md5] = n
                else:
                    self.retry.pop(md5, None)
                    self.done.add(md5)
            indices.append(_part_index(path))
        self.next_index = max(indices) + 1
        self.resumed = len(self.done)
        if self.resumed or self.retry:
            log.info(
                "resuming %s: %d songs done, %d transient failures to retry once",
                self.folder,
                self.resumed,
                len(self.retry),
            )
        write_json(state_path, {"fingerprint": fingerprint, "complete": False})

    def commit(self, results: list[SongResult]) -> tuple[int, int]:
        """Write one chunk (songs not done yet); returns (songs, bars) written."""
        fresh, keys = [], set()
        for r in results:
            if r.key not in self.done and r.key not in keys:
                fresh.append(r)
                keys.add(r.key)
        if not fresh:
            return 0, 0
        name = f"part-{self.next_index:05d}.parquet"
        bars = bars_table(fresh)
        if bars.num_rows:
            write_table(self.folder / name, bars)
        summary = pa.Table.from_pylist(
            [summary_row(r, self.retry.get(r.key, 0) + 1) for r in fresh], schema=SONG_SCHEMA
        )
        meta = _meta_table([r.meta for r in fresh], set(SONG_SCHEMA.names))
        for column in meta.column_names:
            summary = summary.append_column(column, meta.column(column))
        write_table(self.progress / name, summary)  # the commit record
        self.done |= keys
        self.next_index += 1
        return len(fresh), bars.num_rows

    def finalize(self, extra: dict) -> dict:
        """songs.parquet and meta.parquet from all progress files (a retried song's last row);
        returns song counts."""
        parts = sorted(self.progress.glob("part-*.parquet"))
        last: dict[str, int] = {}  # retried md5 -> index of its newest summary
        seen_failed: set[str] = set()
        for k, path in enumerate(parts):
            table = pq.read_table(path, columns=["md5", "status"])
            for md5, status in zip(*(c.to_pylist() for c in table.columns), strict=True):
                if md5 in seen_failed:
                    last[md5] = k
                if status == FAILED:
                    seen_failed.add(md5)
        schemas = [pq.read_schema(p) for p in parts]
        meta_fields = (
            [
                f
                for f in pa.unify_schemas(schemas, promote_options="permissive")
                if f.name not in SONG_SCHEMA.names
            ]
            if parts
            else []
        )
        meta_schema = pa.schema([("md5", pa.string()), *meta_fields])
        counts: Counter = Counter()
        reasons: Counter = Counter()
        with (
            _parquet_out(self.folder / "songs.parquet", SONG_SCHEMA) as songs,
            _parquet_out(self.folder / "meta.parquet", meta_schema) as meta,
        ):
            for k, path in enumerate(parts):
                table = _conform(pq.read_table(path), pa.unify_schemas([SONG_SCHEMA, meta_schema]))
                if last:
                    keep = [last.get(m, k) == k for m in table.column("md5").to_pylist()]
                    table = table.filter(pa.array(keep))
                songs.write_table(table.select(SONG_SCHEMA.names))
                meta.write_table(table.select(meta_schema.names))
                status = table.column("status").to_pylist()
                counts.update(status)
                counts["bars"] += sum(table.column("n_bars").to_pylist())
                counts["bars_fallback"] += sum(table.column("bars_fallback").to_pylist())
                counts["songs_fallback"] += sum(
                    f is not None and s == OK
                    for f, s in zip(table.column("fallback").to_pylist(), status, strict=True)
                )
                reasons.update(
                    reason_kind(r)
                    for r, s in zip(table.column("reason").to_pylist(), status, strict=True)
                    if s == FAILED
                )
        if not any(self.folder.glob("part-*.parquet")):  # readers need no empty-folder case
            write_table(self.folder / "part-00000.parquet", BAR_SCHEMA.empty_table())
        summary = {
            "songs": counts[OK] + counts[FAILED],
            "songs_ok": counts[OK],
            "songs_failed": counts[FAILED],
            "bars": counts["bars"],
            "songs_fallback": counts["songs_fallback"],
            "bars_fallback": counts["bars_fallback"],
            **{f"failed_{k}": v for k, v in sorted(reasons.items())},
        }
        write_json(self.folder / "run.json", {"fingerprint": self.fingerprint, **extra, **summary})
        return summary


def _meta_table(metas: list[dict], reserved: set[str]) -> pa.Table:
    rows = [{k: v for k, v in m.items() if k not in reserved} for m in metas]
    if not any(rows):
        return pa.table({})
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types across rows: keep them as text
        names = list(dict.fromkeys(k for r in rows for k in r))
        return pa.table({k: [None if r.get(k) is None else str(r[k]) for r in rows] for k in names})


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s columns in `schema` (missing ones null; a null-typed chunk promoted)."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col if col.type == f.type else col.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


@contextlib.contextmanager
def _parquet_out(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        yield writer
