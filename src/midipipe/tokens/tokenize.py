"""Tokenize MIDI files into REMI and MuseTok token shards in a crash-proof process pool.

Each worker parses a file once with symusic and produces both token streams; anything that
goes wrong (a parser error, a hang, a crashed interpreter) becomes a rejects row with a
readable reason, and every other file still lands. Good music outside a vocabulary is kept:
rare meters are mapped onto supported ones and MuseTok's out-of-range pitches move by octaves,
counted in the metrics (`*_remapped_*`, `musetok_folded_notes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from midipipe.core.code import code_version
from midipipe.core.errors import BadMidi
from midipipe.core.io import ShardWriter, part_files, write_json, write_table
from midipipe.core.params import TokenizeParams
from midipipe.data import store
from midipipe.data.midi import load_score
from midipipe.data.pool import Failure, robust_map
from midipipe.tokens import remi
from midipipe.tokens.shards import REJECTS_SCHEMA, TOKENS_SCHEMA, read_parts

log = logging.getLogger(__name__)

# Per worker process, set by the pool initializer: the tokenizer is built once, not per file.
_TOKENIZER = None
_WITH_MUSETOK = False
_MAX_NOTES: int | None = None


def _init_worker(remi_overrides: dict, with_musetok: bool, max_notes: int) -> None:
    global _TOKENIZER, _WITH_MUSETOK, _MAX_NOTES
    _TOKENIZER = remi.make_tokenizer(remi_overrides)
    _WITH_MUSETOK = with_musetok
    _MAX_NOTES = max_notes


# what the pool tokenizes: (piece id, its name in rejects, its bytes or a path read there)
Item = tuple[str, str, bytes | str]


def _tokenize_one(item: Item) -> dict:
    """Both token streams of one file (its bytes, or a path read here), or why each failed."""
    from midipipe.musetok.events import Fixes, MuseTokReject, encode_midi

    src = item[2]
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    try:  # unreadable, empty or oversized: the same reason for both streams
        score = load_score(data, max_notes=_MAX_NOTES)
    except BadMidi as exc:
        return Failure(str(exc))
    out: dict = {"remi": None, "musetok": None, "remi_remapped": Counter(), "musetok_fixes": None}
    try:
        out["remi"] = remi.encode(_TOKENIZER, score, out["remi_remapped"])
    except BadMidi as exc:
        out["remi"] = Failure(str(exc))
    if _WITH_MUSETOK:
        out["musetok_fixes"] = fixes = Fixes()
        try:
            ids, bars = encode_midi(data, fixes)
            # int32 arrays, as REMI's: compact to send back and to hold until a part is written
            out["musetok"] = np.asarray(ids, np.int32), np.asarray(bars, np.int32)
        except MuseTokReject as exc:
            out["musetok"] = Failure(str(exc))
    return out


@dataclass
class Summary:
    """Counts for metrics/tokenize.json (`metrics()` flattens them)."""

    files: int = 0
    remi_pieces: int = 0
    remi_tokens: int = 0
    remi_bars: int = 0
    musetok_pieces: int = 0
    musetok_tokens: int = 0
    musetok_bars: int = 0
    rejects: int = 0
    remi_remapped_pieces: int = 0  # pieces kept with some bars in a mapped meter
    musetok_remapped_pieces: int = 0
    musetok_folded_pieces: int = 0  # pieces with pitches moved into 21-108 by octaves
    musetok_folded_notes: int = 0
    musetok_snapped_notes: int = 0  # onsets moved to the nearest beat MuseTok's dictionary has
    # bars in each mapped meter, e.g. {"13/16": 40}
    remi_remapped_bars: Counter = field(default_factory=Counter)
    musetok_remapped_bars: Counter = field(default_factory=Counter)

    def count(self, stream: str, ids: list[int], bar_starts: list[int]) -> None:
        for what, n in (("pieces", 1), ("tokens", len(ids)), ("bars", len(bar_starts))):
            key = f"{stream}_{what}"
            setattr(self, key, getattr(self, key) + n)

    def count_fixes(self, remi_bars: Counter, musetok) -> None:
        """What one kept piece needed: REMI bars per mapped meter, MuseTok's `Fixes`."""
        if remi_bars:
            self.remi_remapped_pieces += 1
            self.remi_remapped_bars.update(remi_bars)
        if musetok is not None and musetok.meter is not None:
            self.musetok_remapped_pieces += 1
            self.musetok_remapped_bars[musetok.meter] += musetok.bars
        if musetok is not None and musetok.folded_notes:
            self.musetok_folded_pieces += 1
            self.musetok_folded_notes += musetok.folded_notes
        if musetok is not None:
            self.musetok_snapped_notes += musetok.snapped_notes

    @classmethod
    def restore(cls, saved: dict) -> Summary:
        """A summary from `vars()` of one saved at a checkpoint (its Counters as dicts)."""
        summary = cls()
        for key, value in saved.items():
            setattr(summary, key, Counter(value) if isinstance(value, dict) else value)
        return summary

    def metrics(self) -> dict:
        """Flat JSON: per-meter bars as `remi_remapped_bars_13_16`, and their totals."""
        out = {}
        for key, value in vars(self).items():
            if isinstance(value, Counter):
                out[key] = sum(value.values())
                for meter, n in sorted(value.items()):
                    out[f"{key}_{meter.replace('/', '_')}"] = n
            else:
                out[key] = value
        return out


PROGRESS_FILE = "progress.json"  # what a later run may keep: a fingerprint and a checkpoint
STREAMS = ("remi", "musetok", ".rejects")  # token shards, and the rejects (merged at the end)
_NO_EFFECT = ("workers", "batch_size")  # how fast, not what: a resumed run may change them


def _fingerprint(params: TokenizeParams) -> str:
    """What every token row depends on besides its file: the params that shape tokens and the
    code that makes them."""
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k not in _NO_EFFECT}
    text = json.dumps(settings, sort_keys=True, default=str) + code_version(__name__)
    return hashlib.sha256(text.encode()).hexdigest()


def _stored_ids(out_dir: Path) -> pa.Array:
    """The ids of the pieces the shards hold (each once), as one Arrow array (a few dozen
    bytes a piece)."""
    chunks = [
        chunk
        for stream in STREAMS
        for part in part_files(out_dir / stream)
        for chunk in pq.read_table(part, columns=["piece_id"])[0].chunks
    ]
    return pa.chunked_array(chunks, pa.string()).combine_chunks().unique()


def _checkpoint(
    out_dir: Path, resume: bool, fingerprint: str, wanted: Callable[[], pa.Array]
) -> dict:
    """The last checkpoint of a run (finished or not) with the same params and code, when all
    the files it holds are still among `wanted()` (`have`: those files, not tokenized again);
    else a clean folder. A file that left the corpus would leave stale rows: that starts clean
    too."""
    progress = out_dir / PROGRESS_FILE
    if resume and progress.is_file():
        state = json.loads(progress.read_text())
        if state.get("fingerprint") == fingerprint:
            for stream, n in state["parts"].items():  # parts written after the checkpoint
                for part in part_files(out_dir / stream)[n:]:
                    part.unlink()
            have = _stored_ids(out_dir)
            gone = (
                len(have) - pc.sum(pc.is_in(have, value_set=wanted())).as_py() if len(have) else 0
            )
            if not gone:
                log.info("resuming after %d files (%s)", len(have), progress)
                return {**state, "have": have}
            log.info("%d tokenized files left the corpus: from scratch", gone)
        else:
            log.info("%s is from other params or code: tokenizing from scratch", progress)
    for stream in STREAMS:
        shutil.rmtree(out_dir / stream, ignore_errors=True)
    (out_dir / "rejects.parquet").unlink(missing_ok=True)
    return {"fingerprint": fingerprint, "done": 0, "parts": {}, "summary": {}, "have": None}


def tokenize_files(
    items: Sequence[tuple[str, str]],
    out_dir: str | Path,
    params: TokenizeParams,
    total: int | None = None,
    resume: bool = False,
    music: Callable[[Sequence[tuple[str, str]]], Iterable[bytes]] | None = None,
) -> Summary:
    """Write `remi/part-*.parquet`, `remi/tokenizer.json`, `musetok/part-*.parquet` and
    `rejects.parquet` under `out_dir` for `(piece_id, name)` items, streaming.

    `music(items)` yields each item's bytes in order (the corpus store: the parent reads them,
    workers get one file's bytes each); without it each name is a file path a worker reads.

    Every `rows_per_part` files the shards are flushed and `progress.json` records how far the
    run got; with `resume`, a run with the same params and code tokenizes only the items its
    shards lack (an interrupted run continues; files added to the corpus are appended; no file
    twice, none lost), unless a tokenized file is no longer among the items: then, as without
    `resume`, it starts clean."""
    ids = pa.array([pid for pid, _ in items], pa.string())

    def todo(have: pa.Array | None) -> Iterator[Item]:
        done = pc.is_in(ids, value_set=have).to_pylist() if have is not None else [False] * len(ids)
        keep = [item for item, old in zip(items, done, strict=True) if not old]
        srcs = music(keep) if music is not None else (path for _, path in keep)
        return ((pid, name, src) for (pid, name), src in zip(keep, srcs, strict=True))

    return _tokenize(out_dir, params, lambda: ids, todo, total, resume)


def _tokenize(
    out_dir: str | Path,
    params: TokenizeParams,
    wanted: Callable[[], pa.Array],
    todo: Callable[[pa.Array | None], Iterable[Item]],
    total: int | None,
    resume: bool,
) -> Summary:
    """`tokenize_files` over `todo(have)`: the items whose ids the shards kept at the
    checkpoint (`have`, None when starting clean) lacks; `wanted()`: every item's id."""
    out_dir = Path(out_dir)
    state = _checkpoint(out_dir, resume, _fingerprint(params), wanted)
    have = state.pop("have")
    tokenizer = remi.make_tokenizer(params.remi)
    (out_dir / "remi").mkdir(parents=True, exist_ok=True)
    tokenizer.save(out_dir / "remi")
    summary = Summary.restore(state["summary"])
    writers = {
        stream: ShardWriter(
            out_dir / stream,
            REJECTS_SCHEMA if stream == ".rejects" else TOKENS_SCHEMA,
            params.rows_per_part,
            first_part=state["parts"].get(stream, 0),
        )
        for stream in STREAMS
        if stream != "musetok" or params.musetok
    }
    done = len(have) if have is not None else 0
    results = robust_map(
        _tokenize_one,
        todo(have),
        workers=params.workers,
        timeout=params.timeout_s,
        batch_size=params.batch_size,
        initializer=_init_worker,
        initargs=(params.remi, params.musetok, params.max_notes),
    )
    bar = tqdm(results, total=total, initial=done, desc="tokenize", unit="file")
    for (pid, path, _), res in bar:
        summary.files += 1
        if isinstance(res, Failure):  # the whole file: unreadable, crashed or hung
            res = {"remi": res, "musetok": res if params.musetok else None}
        else:
            summary.count_fixes(
                res["remi_remapped"] if not isinstance(res["remi"], Failure) else Counter(),
                res["musetok_fixes"] if not isinstance(res["musetok"], Failure) else None,
            )
        for stream in ("remi", "musetok"):
            got = res[stream]
            if stream not in writers or got is None:
                continue
            if isinstance(got, Failure):
                writers[".rejects"].add(
                    {
                        "piece_id": pid,
                        "path": str(path),
                        "stage": f"tokenize/{stream}",
                        "reason": got.reason,
                    }
                )
                summary.rejects += 1
                log.info("reject %s (%s): %s", path, stream, got.reason)
                continue
            ids, bar_starts = got
            writers[stream].add({"piece_id": pid, "ids": ids, "bar_starts": bar_starts})
            summary.count(stream, ids, bar_starts)
        done += 1
        if done % params.rows_per_part == 0:
            _save_checkpoint(out_dir, state, writers, done, summary)
    for writer in writers.values():
        writer.close()
    _save_checkpoint(out_dir, state, writers, done, summary)
    write_table(out_dir / "rejects.parquet", read_parts(out_dir / ".rejects"))
    return summary


_STORE_COLUMNS = ["md5", "source", "original", "music"]


def _store_items(corpus: Path, have: pa.Array | None) -> Iterator[Item]:
    """`(piece_id, "source:original", bytes)` of every piece of the store not in `have`, in
    store order (shard, then row), one row group in memory at a time."""
    done = np.sort(store.id_keys(have)) if have is not None else np.empty(0, "S1")
    for batch in store.iter_batches(corpus, _STORE_COLUMNS, batch_size=64):
        if len(done):
            batch = batch.filter(pa.array(~store.contains(done, batch["md5"])))
        pid, source, original, music = (batch.column(name).to_pylist() for name in _STORE_COLUMNS)
        for i in range(batch.num_rows):
            yield pid[i], f"{source[i]}:{original[i]}", music[i]


def tokenize_corpus(
    data_dir: str | Path,
    params: TokenizeParams,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> Summary:
    """`tokenize_files` over the corpus store under `data_dir` (`corpus/`: organize leaves
    there exactly the manifest's pieces), read shard by shard in store order, so memory holds
    no per-piece state; tokens go to `out_dir` (`data_dir/tokens`), rejects name each file as
    `source:original name`."""
    corpus = Path(data_dir) / "corpus"
    return _tokenize(
        out_dir if out_dir is not None else Path(data_dir) / "tokens",
        params,
        lambda: store.column(corpus, "md5"),
        lambda have: _store_items(corpus, have),
        store.count(corpus),
        resume,
    )


def _save_checkpoint(
    out_dir: Path, state: dict, writers: dict[str, ShardWriter], done: int, summary: Summary
) -> None:
    """Flush every shard, then record how far the run got (in that order: a crash between
    the two only repeats work)."""
    for writer in writers.values():
        writer.flush()
    state["done"] = done
    state["parts"] = {s: w.first_part + len(w.parts) for s, w in writers.items()}
    state["summary"] = vars(summary)
    write_json(out_dir / PROGRESS_FILE, state)
