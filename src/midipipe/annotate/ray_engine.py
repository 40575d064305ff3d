"""Stage 10's Ray Data engine (`annotate.engine: ray`), for many cores or machines.

`ray.data.read_parquet` (or the hub's stream through `from_huggingface`) -> `limit` ->
`map_batches` with an actor class that loads the models once (`ray_actors` of them,
`num_gpus` each) -> the driver commits the results with the local engine's `PartStore`.
Each actor parses its songs in its own pool of `ray_workers` processes (`RobustPool`, spawned:
forking a Ray worker is unsafe) under `timeout_s`, as the local engine does: a hanging or
crashing file fails that song only, recorded with its reason, and the actor lives on. Writing
on the driver keeps the commit protocol, so resume, no-duplicate and output rows are the same
as the local engine's; the rows it receives are small (per-bar floats), the heavy work is in
actors. Ray must be installed (`ray[data]`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from midipipe.annotate.annotator import Annotator, SongResult
from midipipe.annotate.params import AnnotateParams
from midipipe.annotate.report import Report
from midipipe.annotate.rows import job_of, source_files, source_identity
from midipipe.annotate.song import warm_up
from midipipe.annotate.store import PartStore

log = logging.getLogger(__name__)

PHASES = ("parse", "events", "cues", "encoder", "regressor")
RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("skip", pa.bool_()),
        ("reason", pa.string()),
        ("estimator", pa.string()),
        ("fallback", pa.string()),
        ("fallback_estimator", pa.string()),
        ("fallback_bars", pa.list_(pa.int32())),
        ("n_truncated", pa.int32()),
        ("valence", pa.list_(pa.float32())),
        ("arousal", pa.list_(pa.float32())),
        ("bounds", pa.list_(pa.float64())),
        ("start_s", pa.list_(pa.float32())),
        ("meta", pa.string()),
        ("pad_bars", pa.int64()),
        ("pad_positions", pa.int64()),
        ("pad_padding", pa.int64()),
    ]
    + [(f"t_{phase}", pa.float64()) for phase in PHASES]
)


def _row(key: str, r: SongResult | None, meta: dict) -> dict:
    ok = r is not None and r.reason is None
    return {
        "key": key,
        "skip": r is None,
        "reason": r.reason if r else None,
        "estimator": r.estimator if r else None,
        "fallback": r.fallback if r else None,
        "fallback_estimator": r.fallback_estimator if r else None,
        "fallback_bars": None if r is None or r.fallback_bars is None else r.fallback_bars.tolist(),
        "n_truncated": r.n_truncated if r else 0,
        "valence": r.va[:, 0].tolist() if ok else [],
        "arousal": r.va[:, 1].tolist() if ok else [],
        "bounds": r.bounds.tolist() if ok else [],
        "start_s": r.start_s.tolist() if ok else [],
        "meta": json.dumps(meta, default=str) if r else None,
        "pad_bars": 0,
        "pad_positions": 0,
        "pad_padding": 0,
        **{f"t_{phase}": 0.0 for phase in PHASES},
    }


def _result(row: dict) -> SongResult:
    ok = row["reason"] is None
    va = np.stack([np.asarray(row[axis], np.float32) for axis in ("valence", "arousal")], 1)
    return SongResult(
        row["key"],
        row["reason"],
        row["estimator"] or "",
        va if ok else None,
        np.asarray(row["bounds"], np.float64) if ok else None,
        np.asarray(row["start_s"], np.float32) if ok else None,
        row["fallback"],
        None if row["fallback_bars"] is None else np.asarray(row["fallback_bars"], np.int64),
        row["fallback_estimator"] or "",
        row["n_truncated"],
        json.loads(row["meta"]),
    )


class AnnotateActor:
    """Holds the models and a pool of parse processes; maps a batch of GigaMIDI rows to one
    result row per song."""

    def __init__(self, p: AnnotateParams, done, context: str = "spawn"):
        import ray

        from midipipe.data.pool import RobustPool

        self.p = p
        self.annotator = Annotator(p)
        self.work = self.annotator.work()
        self.pool = RobustPool(p.ray_workers, initializer=warm_up, context=context)
        self.done = ray.get(done) if isinstance(done, ray.ObjectRef) else done

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        jobs = [job_of(row, self.p.meta_columns) for row in batch.to_pylist()]
        todo = [job for job in jobs if job.key not in self.done]
        before = dict(self.annotator.clock.seconds)
        stats = self.annotator.pad_stats
        pad_before = (stats.bars, stats.positions, stats.padding)
        items = list(self.pool.map(self.work, todo, self.p.timeout_s))
        results = self.annotator.finish(items)
        spent = {k: v - before.get(k, 0.0) for k, v in self.annotator.clock.seconds.items()}
        by_key = {r.key: r for r in results}
        rows = [
            _row(job.key, None if job.key in self.done else by_key.get(job.key), job.meta)
            for job in jobs
        ]
        if rows:  # the batch's seconds and padding ride on its first row
            rows[0].update({f"t_{phase}": spent.get(phase, 0.0) for phase in PHASES})
            rows[0]["pad_bars"] = stats.bars - pad_before[0]
            rows[0]["pad_positions"] = stats.positions - pad_before[1]
            rows[0]["pad_padding"] = stats.padding - pad_before[2]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _dataset(p: AnnotateParams):
    import ray.data

    wanted = ["md5", "music", *p.meta_columns]
    if p.parquet is not None:
        import pyarrow.parquet as pq

        files = source_files(p)
        names = set(pq.read_schema(files[0]).names)
        columns = [c for c in dict.fromkeys(wanted) if c in names]
        return ray.data.read_parquet([str(f) for f in files]).select_columns(columns)
    import datasets

    parts = []
    for split in p.splits:
        stream = datasets.load_dataset(
            p.hf_name, p.hf_config, split=split, revision=p.revision, streaming=True
        )
        parts.append(ray.data.from_huggingface(stream))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _results(
    batch: pa.Table,
) -> tuple[list[SongResult], int, dict[str, float], tuple[int, int, int]]:
    """SongResults of one output batch, the number of skipped (done) rows, the seconds and
    the encoder's (bars, positions, padding)."""
    results, skipped = [], 0
    for row in batch.to_pylist():
        if row["skip"]:
            skipped += 1
        else:
            results.append(_result(row))
    seconds = {phase: float(pc.sum(batch.column(f"t_{phase}")).as_py() or 0.0) for phase in PHASES}
    pad = tuple(
        int(pc.sum(batch.column(f"pad_{k}")).as_py() or 0) for k in ("bars", "positions", "padding")
    )
    return results, skipped, seconds, pad


def annotate_ray(p: AnnotateParams, out_dir: str | Path, progress: bool = True) -> Report:
    """Same outputs as the local engine for `p`, computed on Ray actors. Starts a local Ray
    (`ray_cpus`) unless one is running; leaves it running for the caller."""
    import ray
    import ray.data
    from tqdm import tqdm

    start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=p.ray_cpus or None, include_dashboard=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # `limit` takes the first rows, in order
    context.enable_progress_bars = progress
    driver = Annotator(p, load_models=False, gpu=p.num_gpus > 0)
    store = PartStore(out_dir, {"source": source_identity(p), **driver.fingerprint()})
    report = Report(
        "ray",
        driver.estimator,
        p.ray_actors,
        restarted=store.restarted,
        projection_songs=p.projection_songs,
    )

    ds = _dataset(p)
    if p.limit is not None:
        ds = ds.limit(p.limit)
    ds = ds.map_batches(
        AnnotateActor,
        fn_constructor_kwargs={"p": p, "done": ray.put(store.done)},
        batch_size=p.read_batch,
        batch_format="pyarrow",
        concurrency=p.ray_actors,
        num_cpus=p.ray_workers,
        num_gpus=p.num_gpus or None,
    )
    chunk: list[SongResult] = []
    seconds: dict[str, float] = {}
    encoded = [0, 0, 0]  # bars, positions, padding

    def commit() -> None:
        nonlocal chunk
        t = time.perf_counter()
        songs, bars = store.commit(chunk)
        seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t
        report.songs_new += songs
        report.bars_new += bars
        chunk = []

    with tqdm(desc=f"annotate {p.name} (ray)", unit="song", disable=not progress) as bar:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                results, skipped, spent, pad = _results(batch)
                report.rows_read += len(results) + skipped
                report.skipped_done += skipped
                report.retried += sum(r.key in store.retry for r in results)
                encoded = [a + b for a, b in zip(encoded, pad, strict=True)]
                for phase, s in spent.items():
                    seconds[phase] = seconds.get(phase, 0.0) + s
                chunk.extend(results)
                bar.update(len(results))
                if (
                    len(chunk) >= p.songs_per_part
                    or sum(len(r.va) for r in chunk if r.va is not None) >= p.part_bars
                ):
                    commit()
        except Exception as exc:  # the read failed mid-way: keep what is done, resume later
            report.stream_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "the Ray stream stopped after %d rows: %s (rerun to resume)",
                report.rows_read,
                report.stream_error,
            )
        if chunk:
            commit()
    report.totals = store.finalize(
        {"complete": report.stream_error is None, "stream_error": report.stream_error}
    )
    report.seconds = seconds
    report.encoder_bars = encoded[0]
    report.padded_share = encoded[2] / encoded[1] if encoded[1] else 0.0
    report.wall_s = time.perf_counter() - start
    return report
