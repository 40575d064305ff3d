"""Stage 10's local engine: GigaMIDI rows -> per-bar valence and arousal, resumable,
memory-bounded.

Flow: rows (`rows.open_rows`: local Parquet batch by batch, or the hub's shards streamed) ->
worker processes parse each song, measure its bars and cues and (latent estimators) convert it
to MuseTok events (`robust_map`: a bad file, a hang or a crash fails that song only) -> this
process encodes the bars of many songs per forward pass (`Annotator.finish`) -> one part per
chunk of songs (`store.PartStore`, which also holds the resume protocol)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from midipipe.annotate.annotator import Annotator, PhaseClock
from midipipe.annotate.params import AnnotateParams
from midipipe.annotate.report import Report
from midipipe.annotate.rows import Job, job_of, open_rows, source_identity
from midipipe.annotate.song import Prepared, warm_up
from midipipe.annotate.store import PartStore
from midipipe.data.pool import Failure, default_workers, robust_map

log = logging.getLogger(__name__)


def _jobs(
    rows: Iterable[dict], store: PartStore, p: AnnotateParams, report: Report, clock: PhaseClock
) -> Iterator[Job]:
    """Jobs for the rows not done (nor queued) yet; a source that raises ends the stream,
    recorded."""
    it = iter(islice(rows, p.limit) if p.limit is not None else rows)
    queued: set[str] = set()
    while True:
        try:
            with clock("read"):
                row = next(it)
        except StopIteration:
            return
        except Exception as exc:  # network cut, truncated file: keep what is done, resume later
            report.stream_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "the stream stopped after %d rows: %s (rerun to resume)",
                report.rows_read,
                report.stream_error,
            )
            return
        job = job_of(row, p.meta_columns)
        report.rows_read += 1
        if job.key in store.done or job.key in queued:
            report.skipped_done += 1
            continue
        report.retried += job.key in store.retry
        queued.add(job.key)
        yield job


def annotate_local(
    p: AnnotateParams,
    out_dir: str | Path,
    rows: Iterable[dict] | None = None,
    progress: bool = True,
) -> Report:
    """Annotate the configured rows (or `rows`) into `out_dir` in local worker processes,
    resuming what is there."""
    start = time.perf_counter()
    annotator = Annotator(p)
    store = PartStore(out_dir, {"source": source_identity(p), **annotator.fingerprint()})
    report = Report(
        "local",
        annotator.estimator,
        default_workers(p.workers),
        restarted=store.restarted,
        projection_songs=p.projection_songs,
    )
    source = open_rows(p, store.done) if rows is None else rows
    jobs = _jobs(source, store, p, report, annotator.clock)
    chunk: list[tuple[Job, Prepared | Failure]] = []
    chunk_bars = 0

    def commit() -> None:
        nonlocal chunk, chunk_bars
        results = annotator.finish(chunk)
        with annotator.clock("write"):
            songs, bars = store.commit(results)
        report.songs_new += songs
        report.bars_new += bars
        chunk, chunk_bars = [], 0

    total = p.limit if p.limit is not None and not store.resumed else None
    with tqdm(total=total, desc=f"annotate {p.name}", unit="song", disable=not progress) as bar:
        mapped = robust_map(annotator.work(), jobs, p.workers, p.timeout_s, initializer=warm_up)
        for job, out in mapped:
            chunk.append((job, out))
            chunk_bars += out.n_bars if isinstance(out, Prepared) else 0
            if len(chunk) >= p.songs_per_part or chunk_bars >= p.part_bars:
                commit()
            bar.update()
        if chunk:
            commit()
    with annotator.clock("write"):
        report.totals = store.finalize(
            {"complete": report.stream_error is None, "stream_error": report.stream_error}
        )
    report.seconds = dict(annotator.clock.seconds)
    report.padded_share = annotator.pad_stats.padded_share
    report.encoder_bars = annotator.pad_stats.bars
    report.wall_s = time.perf_counter() - start
    return report
