"""Stage 10's Ray Data engine (`annotate.engine: ray`), for many cores or machines.

`ray.data.read_parquet` (or the hub's stream through `from_huggingface`) -> `limit` ->
`map_batches` with an actor class that loads the models once (`ray_actors` of them,
`num_gpus` each) and runs the same per-song work and batched encoder/MLP step as the local
engine -> the driver commits the results with the local engine's `PartStore`. Writing on the
driver keeps the commit protocol, so resume, no-duplicate and output rows are the same as the
local engine's; the rows it receives are small (per-bar floats), the heavy work is in actors.

Differences from the local engine: a song that crashes or hangs its actor is not isolated
(Ray restarts the actor and retries the batch); Ray must be installed (`ray[data]`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from midipipe.annotate.annotator import (
    AnnotateParams,
    Annotator,
    PartStore,
    Report,
    SongResult,
    job_of,
    source_files,
    source_identity,
)

log = logging.getLogger(__name__)

PHASES = ("parse", "events", "rules", "cues", "encoder", "regressor")
RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("skip", pa.bool_()),
        ("reason", pa.string()),
        ("n_truncated", pa.int32()),
        ("valence", pa.list_(pa.float32())),
        ("arousal", pa.list_(pa.float32())),
        ("meta", pa.string()),
    ]
    + [(f"t_{phase}", pa.float64()) for phase in PHASES]
)


class AnnotateActor:
    """Holds the models; maps a batch of GigaMIDI rows to one result row per song."""

    def __init__(self, p: AnnotateParams, done):
        import ray

        self.p = p
        self.annotator = Annotator(p)
        self.work = self.annotator.work(inline=True)
        self.done = ray.get(done) if isinstance(done, ray.ObjectRef) else done

    def __call__(self, batch: pa.Table) -> pa.Table:
        jobs = [job_of(row, self.p.meta_columns) for row in batch.to_pylist()]
        todo = [job for job in jobs if job.key not in self.done]
        before = dict(self.annotator.clock.seconds)
        items = [(job, self.work(job)) for job in todo]
        results = self.annotator.finish(items)
        spent = {k: v - before.get(k, 0.0) for k, v in self.annotator.clock.seconds.items()}
        by_key = {r.key: r for r in results}
        rows = []
        for job in jobs:
            r = by_key.get(job.key) if job.key not in self.done else None
            va = r.va if r is not None and r.va is not None else np.zeros((0, 2), np.float32)
            rows.append(
                {
                    "key": job.key,
                    "skip": r is None,
                    "reason": r.reason if r else None,
                    "n_truncated": r.n_truncated if r else 0,
                    "valence": va[:, 0].tolist(),
                    "arousal": va[:, 1].tolist(),
                    "meta": json.dumps(job.meta, default=str) if r else None,
                    **{f"t_{phase}": 0.0 for phase in PHASES},
                }
            )
        if rows:  # the batch's seconds ride on its first row
            rows[0].update({f"t_{phase}": spent.get(phase, 0.0) for phase in PHASES})
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


def _results(batch: pa.Table) -> tuple[list[SongResult], int, dict[str, float]]:
    """SongResults of one output batch, the number of skipped (done) rows, and the seconds."""
    results, skipped = [], 0
    for row in batch.to_pylist():
        if row["skip"]:
            skipped += 1
            continue
        va = None
        if row["reason"] is None:
            va = np.stack(
                [np.asarray(row["valence"], np.float32), np.asarray(row["arousal"], np.float32)],
                axis=1,
            )
        results.append(
            SongResult(row["key"], row["reason"], va, row["n_truncated"], json.loads(row["meta"]))
        )
    seconds = {phase: float(pc.sum(batch.column(f"t_{phase}")).as_py() or 0.0) for phase in PHASES}
    return results, skipped, seconds


def annotate_ray(p: AnnotateParams, out_dir: str | Path, progress: bool = True) -> Report:
    """Same outputs as `annotate.annotate` for `p`, computed on Ray actors. Starts a local Ray
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
    driver = Annotator(p, load_models=False)
    store = PartStore(out_dir, {"source": source_identity(p), **driver.fingerprint()})
    report = Report("ray", driver.estimator, p.ray_actors, projection_songs=p.projection_songs)

    ds = _dataset(p)
    if p.limit is not None:
        ds = ds.limit(p.limit)
    ds = ds.map_batches(
        AnnotateActor,
        fn_constructor_kwargs={"p": p, "done": ray.put(store.done)},
        batch_size=p.read_batch,
        batch_format="pyarrow",
        concurrency=p.ray_actors,
        num_gpus=p.num_gpus or None,
    )
    chunk: list[SongResult] = []
    seconds: dict[str, float] = {}

    def commit() -> None:
        nonlocal chunk
        t = time.perf_counter()
        songs, bars = store.commit(chunk, driver.estimator)
        seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t
        report.songs_new += songs
        report.bars_new += bars
        chunk = []

    with tqdm(desc=f"annotate {p.name} (ray)", unit="song", disable=not progress) as bar:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                results, skipped, spent = _results(batch)
                report.rows_read += len(results) + skipped
                report.skipped_done += skipped
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
    report.wall_s = time.perf_counter() - start
    return report
