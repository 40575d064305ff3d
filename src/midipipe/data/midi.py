"""Safe MIDI loading with symusic, and the basic stats the manifest keeps.

Test hook: `MIDIPIPE_TEST_FAULTS="<md5>:abort,<md5>:hang"` makes whatever process parses that
file call `os.abort()` (an interpreter crash) or sleep forever (a hung parser), so tests and
benchmarks can check that every stage isolates real crashes and hangs. Unset in normal runs,
it costs one environment lookup per file.
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import symusic

from midipipe.core.errors import BadMidi

FAULT_ENV = "MIDIPIPE_TEST_FAULTS"


def piece_id(data: bytes) -> str:
    """md5 hex of the file's bytes: GigaMIDI's own key, so annotations join on it."""
    return hashlib.md5(data).hexdigest()


def inject_test_fault(key: str) -> None:
    """Crash or hang here when FAULT_ENV names `key` (module docstring)."""
    for item in os.environ.get(FAULT_ENV, "").split(","):
        md5, _, kind = item.partition(":")
        if md5 == key and kind == "abort":
            faulthandler.disable()  # a quiet crash: no traceback dump from test runners
            os.abort()
        if md5 == key and kind == "hang":
            while True:
                time.sleep(3600)


def load_score(src: bytes | str | Path, max_notes: int | None = None) -> symusic.Score:
    """Parse MIDI bytes or a path in tick time; every failure becomes a readable BadMidi."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    if not data:
        raise BadMidi("empty file (0 bytes)")
    if os.environ.get(FAULT_ENV):
        inject_test_fault(piece_id(data))
    if not data.startswith(b"MThd"):
        raise BadMidi("not a MIDI file (no MThd header)")
    try:
        score = symusic.Score.from_midi(data)
    except Exception as exc:  # symusic raises plain RuntimeError/ValueError with the parser's text
        raise BadMidi(f"cannot parse MIDI: {type(exc).__name__}: {exc}") from exc
    n_notes = score.note_num()
    if n_notes == 0:
        raise BadMidi("no notes")
    if max_notes is not None and n_notes > max_notes:
        raise BadMidi(f"too many notes: {n_notes} > max_notes {max_notes}")
    return score


@dataclass
class Stats:
    n_notes: int
    n_bars: int
    duration_s: float
    n_tracks: int
    tpqn: int
    instrument: int  # GigaMIDI's category: 0 drums only, 1 with drums, 2 no drums


def count_bars(score: symusic.Score) -> int:
    """Bars up to the last note end, following every time-signature change."""
    end = score.end()
    signatures = sorted(score.time_signatures, key=lambda ts: ts.time) or []
    if not signatures or signatures[0].time > 0:
        signatures = [symusic.TimeSignature(0, 4, 4), *signatures]
    bars = 0
    for i, ts in enumerate(signatures):
        seg_end = signatures[i + 1].time if i + 1 < len(signatures) else end
        if ts.time >= end:
            break
        bar_ticks = max(1, score.ticks_per_quarter * 4 * ts.numerator // ts.denominator)
        seg_len = min(seg_end, end) - ts.time
        bars += -(-seg_len // bar_ticks)  # ceil: a partial last bar counts
    return int(bars)


def stats(score: symusic.Score) -> Stats:
    drums = [t.is_drum for t in score.tracks if t.note_num()]
    return Stats(
        n_notes=int(score.note_num()),
        n_bars=count_bars(score),
        duration_s=float(score.to("second").end()),
        n_tracks=len(score.tracks),
        tpqn=int(score.ticks_per_quarter),
        instrument=0 if all(drums) else (1 if any(drums) else 2),
    )
