"""Stage 10's local engine: GigaMIDI rows -> per-bar valence and arousal, resumable, memory-bounded.

Flow: rows (local Parquet read batch by batch, or HF `datasets` streaming; never the whole set)
-> worker processes parse each song and convert it to MuseTok events (`robust_map`: a bad file,
a hang or a crash fails that song only) -> this process encodes the bars of many songs per
forward pass and runs the emotion model over many songs at once -> one part per chunk of songs.
With the rule estimator (what `models/emotion` holds when no labelled data exists) the workers
compute the estimate themselves and the MuseTok encoder is not run: its latents would be unused.
An MLP that reads the rule cues (input `cues` or `latents+cues`) gets them from the workers too,
and one on `cues` alone needs no encoder either.
Bars are MuseTok's in both cases, so annotations of the two estimators line up bar for bar.

Output folder (`data/annotations/<name>/`):
  part-NNNNN.parquet           md5, bar, valence, arousal, estimator (ok songs of one chunk)
  progress/part-NNNNN.parquet  one summary row per song the chunk covers, failed ones included,
                               plus the row's metadata columns (styles, artist...) for stage 11
  songs.parquet                all summaries (SONG_SCHEMA), rebuilt at the end of every run
  meta.parquet                 md5 + metadata columns, rebuilt at the end of every run
  run.json                     fingerprint of source and models, counts, the stream error if any

Resume: a chunk is committed by writing its bars part, then its progress file, each atomically;
the progress file is the commit record. On start, a bars part without a progress file (killed
between the two writes) is deleted, every md5 in a progress file is skipped, and numbering goes
on. A different fingerprint (other models or source) starts afresh rather than mix annotations.
`limit` counts stream rows, done or not, so a resumed run covers the same songs as one pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import resource
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.core.errors import ParamError, SourceError
from midipipe.core.io import atomic_path, write_json, write_table
from midipipe.data.midi import load_score
from midipipe.data.pool import Failure

log = logging.getLogger(__name__)

RULES = "rules"  # models/emotion/config.json `estimator` of the hand-set estimate
INSTRUMENT_COLUMN = "instrument_category__drums-only__0__all-instruments-with-drums__1_no-drums__2"
STYLE_COLUMNS = (
    "music_styles_curated",
    "music_style_scraped",
    "music_style_audio_text_Discogs",
    "music_style_audio_text_Lastfm",
    "music_style_audio_text_Tagtraum",
)
META_COLUMNS = ("split", "title", "artist", *STYLE_COLUMNS, INSTRUMENT_COLUMN, "NOMML")

BAR_SCHEMA = pa.schema(
    [
        ("md5", pa.string()),
        ("bar", pa.int32()),
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
        ("n_bars", pa.int32()),
        ("bars_truncated", pa.int32()),
    ]
    + [(f"{axis}_{s}", pa.float32()) for axis in ("valence", "arousal") for s in STATS]
)
OK, FAILED = "ok", "failed"


@dataclass
class AnnotateParams:
    """`annotate:` section of params.yaml (stage 10)."""

    name: str = "music21"  # output folder data/annotations/<name>/
    parquet: str | list[str] | None = "data/gigamidi"  # local GigaMIDI-schema Parquet (or None)
    hf_name: str | None = None  # e.g. Metacreation/GigaMIDI, streamed (then parquet: null)
    hf_config: str | None = "v2.0.0"  # GigaMIDI version (v3.0.0 when released)
    revision: str | None = None  # hub commit/tag, for a reproducible stream
    splits: list[str] = field(default_factory=lambda: ["train", "validation", "test"])
    limit: int | None = None  # stream rows to cover (done ones count), None = all
    engine: str = "local"  # local | ray
    musetok: str = "models/musetok"
    emotion: str = "models/emotion"
    device: str = "auto"  # encoder and MLP device (local engine)
    workers: int = 0  # parse/events processes, 0 = one per CPU core
    timeout_s: float = 60.0  # per song: a hanging parser becomes a failed song
    songs_per_part: int = 512  # songs per committed chunk: the unit of resume
    part_bars: int = 200_000  # ... or fewer songs when they hold this many bars
    batch_size: int = 256  # bars per encoder forward pass, packed across songs
    read_batch: int = 64  # Parquet rows decoded at a time (ray: rows per actor call)
    max_notes: int = 1_000_000  # larger files fail (memory bound)
    meta_columns: list[str] = field(default_factory=lambda: list(META_COLUMNS))
    ray_actors: int = 2  # ray: model actors
    ray_cpus: int = 0  # ray: CPUs for a local cluster (0 = all); ignored when one is running
    num_gpus: float = 0.0  # ray: GPUs per actor
    projection_songs: int = 2_100_000  # songs in GigaMIDI v2 (extended): for projected_hours

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ParamError(f"annotate.engine must be local or ray, got {self.engine!r}")
        if (self.parquet is None) == (self.hf_name is None):
            raise ParamError("annotate: set exactly one of parquet (local files) or hf_name (hub)")
        if self.limit is not None and self.limit < 0:
            raise ParamError(f"annotate.limit must be >= 0 or null, got {self.limit}")
        for key in ("songs_per_part", "part_bars", "batch_size", "read_batch"):
            if getattr(self, key) < 1:
                raise ParamError(f"annotate.{key} must be >= 1, got {getattr(self, key)}")


# -- rows ---------------------------------------------------------------------------------------


def source_files(p: AnnotateParams) -> list[Path]:
    """Local Parquet files, checked for GigaMIDI's md5 and music columns."""
    from midipipe.data.sources.gigamidi import parquet_files

    return parquet_files(p.parquet, "annotate.parquet")


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
    import datasets

    for split in p.splits:
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
        yield from stream


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


class RowError(ValueError):
    """A row without usable MIDI bytes."""


# -- per-song work (worker processes, or the Ray actor itself) ------------------------------------


@dataclass
class Prepared:
    """A parsed song: MuseTok ids and bars (and the rule cues when the MLP reads them), or
    (rule estimator) its per-bar estimate."""

    n_bars: int
    ids: np.ndarray | None = None
    bar_starts: np.ndarray | None = None
    cues: np.ndarray | None = None  # [n_bars, len(rules.FEATURES)]
    va: np.ndarray | None = None  # [n_bars, 2]
    seconds: dict[str, float] = field(default_factory=dict)


def prepare(
    job: Job, estimator: str, rules: dict | None, max_notes: int, cue_window: int | None = None
) -> Prepared:
    """Parse, MuseTok events, and the rule estimate when that is the estimator (or the rule
    cues over `cue_window` when the MLP reads them); raises with a readable reason (BadMidi,
    MuseTokReject, RowError) for a song that cannot be annotated."""
    from midipipe.musetok.events import encode_score

    if job.missing:
        raise RowError(job.missing)
    t0 = time.perf_counter()
    score = load_score(job.music, max_notes=max_notes)
    t1 = time.perf_counter()
    ids, bar_starts = encode_score(score, job.music)
    t2 = time.perf_counter()
    seconds = {"parse": t1 - t0, "events": t2 - t1}
    if estimator == RULES:
        from midipipe.core.params import build
        from midipipe.emotion.rules import RuleParams, bar_grid, estimate

        grid = bar_grid(score, len(bar_starts))
        va = estimate(score, grid, build(RuleParams, rules, "rules")).astype(np.float32)
        seconds["rules"] = time.perf_counter() - t2
        return Prepared(len(bar_starts), va=va, seconds=seconds)
    cues = None
    if cue_window is not None:
        from midipipe.emotion.rules import bar_features, bar_grid

        cues = bar_features(score, bar_grid(score, len(bar_starts)), cue_window)
        seconds["cues"] = time.perf_counter() - t2
    return Prepared(
        len(bar_starts),
        np.asarray(ids, np.int32),
        np.asarray(bar_starts, np.int32),
        cues=None if cues is None else cues.astype(np.float32),
        seconds=seconds,
    )


def prepare_inline(
    job: Job, estimator: str, rules: dict | None, max_notes: int, cue_window: int | None = None
):
    """`prepare` in this process, a failure reported as `robust_map` reports it."""
    try:
        return prepare(job, estimator, rules, max_notes, cue_window)
    except Exception as exc:
        return Failure(f"{type(exc).__name__}: {exc}")


# -- models ------------------------------------------------------------------------------------


class PhaseClock:
    """Seconds per phase, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def add(self, seconds: dict[str, float]) -> None:
        for phase, s in seconds.items():
            self.seconds[phase] += s


@dataclass
class SongResult:
    key: str
    reason: str | None  # None: annotated
    va: np.ndarray | None = None  # [n_bars, 2]
    n_truncated: int = 0
    meta: dict = field(default_factory=dict)


def emotion_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if path.exists():
        return json.loads(path.read_text())
    from midipipe.emotion import rules_config
    from midipipe.emotion.rules import RuleParams

    log.warning("no %s: annotating with the rule-based estimate (hand-set, not learned)", path)
    return rules_config(RuleParams())


class Annotator:
    """The models (MuseTok encoder + emotion MLP, or nothing for the rule estimator) and the
    batched step from parsed songs to per-bar valence/arousal."""

    def __init__(self, p: AnnotateParams, load_models: bool = True):
        from midipipe.emotion.regressor import latent_of, reads_cues

        self.p = p
        self.config = emotion_config(p.emotion)
        self.estimator = self.config["estimator"]
        self.rules = self.config.get("rules") if self.estimator == RULES else None
        mlp_input = None if self.estimator == RULES else self.config["mlp"]["input"]
        self.latent = None if mlp_input is None else latent_of(mlp_input)  # None: no encoder
        self.cue_window = self.config["cue_window"] if mlp_input and reads_cues(mlp_input) else None
        self.clock = PhaseClock()
        self.encoder = self.mlp = None
        if self.estimator != RULES and load_models:
            self._load_models()

    def _load_models(self) -> None:
        from midipipe.core.device import resolve_device
        from midipipe.emotion import regressor
        from midipipe.musetok import checkpoint

        device = resolve_device(self.p.device)
        self.mlp = regressor.load(self.p.emotion).to(device)
        if self.latent is not None:
            self.encoder = checkpoint.load(self.p.musetok, device=device)
        cfg = self.mlp.cfg
        musetok = None if self.encoder is None else self.encoder.config
        width = regressor.input_width(cfg.input, musetok)
        if width != cfg.width:
            raise ValueError(
                f"{self.p.musetok} gives {cfg.input} of width {width}, but the "
                f"emotion model in {self.p.emotion} was trained on width "
                f"{cfg.width}: use the MuseTok model it was trained with"
            )

    def work(self, inline: bool = False) -> partial:
        """The per-song function for workers (picklable)."""
        fn = prepare_inline if inline else prepare
        return partial(
            fn,
            estimator=self.estimator,
            rules=self.rules,
            max_notes=self.p.max_notes,
            cue_window=self.cue_window,
        )

    def fingerprint(self) -> dict:
        """What the annotations depend on besides the song bytes."""
        files = [Path(self.p.emotion) / n for n in ("config.json", "model.safetensors")]
        if self.latent is not None:
            files += [Path(self.p.musetok) / n for n in ("config.json", "model.safetensors")]
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            if path.exists():
                with path.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
        return {
            "estimator": self.estimator,
            "models_sha256": digest.hexdigest(),
            "rules": self.rules,
        }

    def finish(self, items: list[tuple[Job, Prepared | Failure]]) -> list[SongResult]:
        """Per-song results in input order; the MLP path encodes all bars of `items` together."""
        results = [
            SongResult(
                job.key,
                out.reason if isinstance(out, Failure) else None,
                out.va if isinstance(out, Prepared) else None,
                meta=job.meta,
            )
            for job, out in items
        ]
        for _, out in items:
            if isinstance(out, Prepared):
                self.clock.add(out.seconds)
        todo = [
            (r, out)
            for r, (_, out) in zip(results, items, strict=True)
            if isinstance(out, Prepared) and out.va is None
        ]
        if todo:
            self._predict(todo)
        return results

    def _predict(self, todo: list[tuple[SongResult, Prepared]]) -> None:
        from midipipe.emotion import regressor
        from midipipe.musetok.encode import encode_pieces

        latents: dict[str, np.ndarray] = {}
        if self.latent is not None:
            with self.clock("encoder"):
                pieces = ((out.ids, out.bar_starts) for _, out in todo)
                encoded = list(encode_pieces(self.encoder, pieces, self.p.batch_size))
                latents[self.latent] = np.concatenate(
                    [regressor.inputs_of(e)[self.latent] for e in encoded]
                )
            for (result, _), enc in zip(todo, encoded, strict=True):
                result.n_truncated = enc.n_truncated
        cues = (
            np.concatenate([out.cues for _, out in todo]) if self.cue_window is not None else None
        )
        x = regressor.assemble(self.mlp.cfg.input, latents, cues)
        offsets = np.concatenate([[0], np.cumsum([out.n_bars for _, out in todo])])
        with self.clock("regressor"):
            va = regressor.predict(self.mlp, x, offsets)
        for (result, _), lo, hi in zip(todo, offsets[:-1], offsets[1:], strict=True):
            result.va = va[lo:hi].astype(np.float32, copy=False)


# -- output ------------------------------------------------------------------------------------


def summary_row(r: SongResult, estimator: str) -> dict:
    row = {
        "md5": r.key,
        "status": OK if r.reason is None else FAILED,
        "reason": r.reason,
        "estimator": estimator,
        "n_bars": 0,
        "bars_truncated": r.n_truncated,
    }
    if r.reason is None:
        row["n_bars"] = len(r.va)
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


def bars_table(results: list[SongResult], estimator: str) -> pa.Table:
    ok = [r for r in results if r.reason is None]
    lengths = [len(r.va) for r in ok]
    va = np.concatenate([r.va for r in ok]) if ok else np.zeros((0, 2), np.float32)
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat([r.key for r in ok], lengths).tolist() if ok else [], pa.string()),
            pa.array(
                np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
                if ok
                else np.zeros(0, np.int32)
            ),
            pa.array(va[:, 0].astype(np.float32)),
            pa.array(va[:, 1].astype(np.float32)),
            pa.array([estimator] * len(va), pa.string()),
        ],
        schema=BAR_SCHEMA,
    )


def _part_index(path: Path) -> int:
    return int(path.stem.split("-")[1])


class PartStore:
    """The output folder: commits chunks atomically, knows which songs are done."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.progress = self.folder / "progress"
        state_path = self.folder / "run.json"
        if state_path.exists():
            old = json.loads(state_path.read_text()).get("fingerprint")
            if old != fingerprint:
                log.warning(
                    "%s was annotated from another source or with other models: starting afresh",
                    self.folder,
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
        indices = [-1]
        for path in self.progress.glob("part-*.parquet"):
            self.done.update(pq.read_table(path, columns=["md5"]).column("md5").to_pylist())
            indices.append(_part_index(path))
        self.next_index = max(indices) + 1
        self.resumed = len(self.done)
        if self.resumed:
            log.info("resuming %s: %d songs already done", self.folder, self.resumed)
        write_json(state_path, {"fingerprint": fingerprint, "complete": False})

    def commit(self, results: list[SongResult], estimator: str) -> tuple[int, int]:
        """Write one chunk (songs not done yet); returns (songs, bars) written."""
        fresh, keys = [], set()
        for r in results:
            if r.key not in self.done and r.key not in keys:
                fresh.append(r)
                keys.add(r.key)
        if not fresh:
            return 0, 0
        name = f"part-{self.next_index:05d}.parquet"
        bars = bars_table(fresh, estimator)
        if bars.num_rows:
            write_table(self.folder / name, bars)
        summary = pa.Table.from_pylist(
            [summary_row(r, estimator) for r in fresh], schema=SONG_SCHEMA
        )
        meta = _meta_table([r.meta for r in fresh], set(SONG_SCHEMA.names))
        for column in meta.column_names:
            summary = summary.append_column(column, meta.column(column))
        write_table(self.progress / name, summary)  # the commit record
        self.done |= keys
        self.next_index += 1
        return len(fresh), bars.num_rows

    def finalize(self, extra: dict) -> dict:
        """songs.parquet and meta.parquet from all progress files; returns song counts."""
        parts = sorted(self.progress.glob("part-*.parquet"))
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
            for path in parts:
                table = pq.read_table(path)
                songs.write_table(table.select(SONG_SCHEMA.names).cast(SONG_SCHEMA))
                meta.write_table(_conform(table, meta_schema))
                status = table.column("status").to_pylist()
                counts.update(status)
                counts["bars"] += sum(table.column("n_bars").to_pylist())
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
            **{f"failed_{k}": v for k, v in sorted(reasons.items())},
        }
        write_json(self.folder / "run.json", {"fingerprint": self.fingerprint, **extra, **summary})
        return summary


def reason_kind(reason: str) -> str:
    """The exception type of a failure reason ("BadMidi: no notes" -> BadMidi)."""
    if reason.startswith("timed out"):
        return "Timeout"
    if reason.startswith("worker crashed"):
        return "WorkerCrash"
    return reason.split(":")[0]


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


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    """One run's facts; `metrics()` is metrics/annotate.json."""

    engine: str
    estimator: str = ""
    workers: int = 0
    rows_read: int = 0
    skipped_done: int = 0
    songs_new: int = 0
    bars_new: int = 0
    stream_error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    projection_songs: int = 0

    def metrics(self) -> dict[str, Any]:
        bars_per_s = self.bars_new / self.wall_s if self.wall_s else 0.0
        mean_bars = self.totals.get("bars", 0) / max(1, self.totals.get("songs_ok", 0))
        hours = self.projection_songs * mean_bars / bars_per_s / 3600 if bars_per_s else None
        out: dict[str, Any] = {
            "engine": self.engine,
            "estimator": self.estimator,
            "estimator_learned": self.estimator != RULES,
            "workers": self.workers,
            **self.totals,
            "rows_read": self.rows_read,
            "skipped_done": self.skipped_done,
            "songs_this_run": self.songs_new,
            "bars_this_run": self.bars_new,
            "wall_s": self.wall_s,
            "bars_per_s": bars_per_s,
            "songs_per_s": self.songs_new / self.wall_s if self.wall_s else 0.0,
            "mean_bars_per_song": mean_bars,
            "projection_songs": self.projection_songs,
            "projected_hours_gigamidi_v2": hours,
            "stream_error": self.stream_error or "",
        }
        out["peak_rss_main_mb"], out["peak_rss_worker_mb"] = peak_rss_mb()
        for phase in ("read", "parse", "events", "rules", "cues", "encoder", "regressor", "write"):
            out[f"seconds_{phase}"] = self.seconds.get(phase, 0.0)
        return out


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process, and of the largest finished child (a worker)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(child, 1)


def source_identity(p: AnnotateParams) -> dict:
    if p.parquet is not None:
        return {"parquet": [[f.name, f.stat().st_size] for f in source_files(p)]}
    return {
        "hf_name": p.hf_name,
        "hf_config": p.hf_config,
        "revision": p.revision,
        "splits": list(p.splits),
    }
