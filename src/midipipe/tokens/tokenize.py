"""Tokenize MIDI files into REMI and MuseTok token shards in a crash-proof process pool.

Each worker parses a file once with symusic and produces both token streams; anything that
goes wrong (a parser error, a hang, a crashed interpreter) becomes a rejects row with a
readable reason, and every other file still lands.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from midipipe.core.errors import BadMidi
from midipipe.core.io import ShardWriter, write_rows
from midipipe.core.params import TokenizeParams
from midipipe.data.midi import load_score
from midipipe.data.pool import Failure, robust_map
from midipipe.tokens import remi
from midipipe.tokens.shards import REJECTS_SCHEMA, TOKENS_SCHEMA

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


def _tokenize_one(item: tuple[str, str]) -> dict:
    """Both token streams of one file, or the reason each one failed."""
    from midipipe.musetok.events import MuseTokReject, encode_midi

    _, path = item
    data = Path(path).read_bytes()
    try:  # unreadable, empty or oversized: the same reason for both streams
        score = load_score(data, max_notes=_MAX_NOTES)
    except BadMidi as exc:
        return Failure(str(exc))
    out: dict = {"remi": None, "musetok": None}
    try:
        out["remi"] = remi.encode(_TOKENIZER, score)
    except BadMidi as exc:
        out["remi"] = Failure(str(exc))
    if _WITH_MUSETOK:
        try:
            out["musetok"] = encode_midi(data)
        except MuseTokReject as exc:
            out["musetok"] = Failure(str(exc))
    return out


@dataclass
class Summary:
    """Flat counts for metrics/tokenize.json."""

    files: int = 0
    remi_pieces: int = 0
    remi_tokens: int = 0
    remi_bars: int = 0
    musetok_pieces: int = 0
    musetok_tokens: int = 0
    musetok_bars: int = 0
    rejects: int = 0

    def count(self, stream: str, ids: list[int], bar_starts: list[int]) -> None:
        for what, n in (("pieces", 1), ("tokens", len(ids)), ("bars", len(bar_starts))):
            key = f"{stream}_{what}"
            setattr(self, key, getattr(self, key) + n)


def tokenize_files(
    items: Iterable[tuple[str, str]],
    out_dir: str | Path,
    params: TokenizeParams,
    total: int | None = None,
) -> Summary:
    """Write `remi/part-*.parquet`, `remi/tokenizer.json`, `musetok/part-*.parquet` and
    `rejects.parquet` under `out_dir` for `(piece_id, path)` items, streaming."""
    out_dir = Path(out_dir)
    tokenizer = remi.make_tokenizer(params.remi)
    (out_dir / "remi").mkdir(parents=True, exist_ok=True)
    tokenizer.save(out_dir / "remi")
    summary = Summary()
    rejects: list[dict] = []
    remi_writer = ShardWriter(out_dir / "remi", TOKENS_SCHEMA, params.rows_per_part)
    musetok_writer = (
        ShardWriter(out_dir / "musetok", TOKENS_SCHEMA, params.rows_per_part)
        if params.musetok
        else None
    )
    results = robust_map(
        _tokenize_one,
        items,
        workers=params.workers,
        timeout=params.timeout_s,
        batch_size=params.batch_size,
        initializer=_init_worker,
        initargs=(params.remi, params.musetok, params.max_notes),
    )
    for (pid, path), res in tqdm(results, total=total, desc="tokenize", unit="file"):
        summary.files += 1
        if isinstance(res, Failure):  # the whole file: unreadable, crashed or hung
            res = {"remi": res, "musetok": res if params.musetok else None}
        for stream, writer in (("remi", remi_writer), ("musetok", musetok_writer)):
            got = res[stream]
            if writer is None or got is None:
                continue
            if isinstance(got, Failure):
                rejects.append(
                    {
                        "piece_id": pid,
                        "path": str(path),
                        "stage": f"tokenize/{stream}",
                        "reason": got.reason,
                    }
                )
                log.info("reject %s (%s): %s", path, stream, got.reason)
                continue
            ids, bar_starts = got
            writer.add({"piece_id": pid, "ids": ids, "bar_starts": bar_starts})
            summary.count(stream, ids, bar_starts)
    remi_writer.close()
    if musetok_writer is not None:
        musetok_writer.close()
    summary.rejects = len(rejects)
    write_rows(out_dir / "rejects.parquet", rejects, REJECTS_SCHEMA)
    return summary
