"""REMI ids straight from note arrays: miditok's output, id for id, without its Event objects.

miditok spends most of `encode` building one Python `Event` (and then one string) per token.
For the configuration this project uses (one stream with Program tokens, tempos, time
signatures, velocities, durations; no rests, chords, pedals or pitch bends) the ids follow
from a stable sort of the notes by onset plus one pass over onset times, so this module
keeps miditok's own `preprocess_score` (resampling, quantization, deduplication) and replaces
only the event building. `supports` says whether a tokenizer is in that configuration;
anything else goes through miditok. `tests/test_fast_remi.py` checks equality with miditok on
built scores and real files, and `benchmarks/bench_tokenize.py` reports the speed.
"""

from __future__ import annotations

import numpy as np
import symusic
from miditok import REMI
from miditok.constants import TIME_SIGNATURE
from miditok.utils import compute_ticks_per_bar, compute_ticks_per_beat, get_score_ticks_per_beat


def supports(tokenizer: REMI) -> bool:
    c = tokenizer.config
    extra = c.additional_params
    return (
        isinstance(tokenizer, REMI)
        and not tokenizer.is_trained
        and c.use_programs
        and c.one_token_stream_for_programs
        and not c.program_changes
        and c.use_time_signatures
        and c.use_tempos
        and c.use_velocities
        and c.use_pitchdrum_tokens
        and not (c.use_rests or c.use_chords or c.use_pitch_intervals or c.use_sustain_pedals)
        and not (c.use_pitch_bends or c.use_control_changes or c.use_key_signatures)
        and not tokenizer.attribute_controls
        and set(c.use_note_duration_programs) >= set(c.programs)
        and not extra.get("use_bar_end_tokens")
        and not extra.get("add_trailing_bars")
        and extra.get("max_bar_embedding") is None
    )


class _Ids:
    """Per-tokenizer lookup tables: note attribute -> id, and miditok's duration table."""

    def __init__(self, tokenizer: REMI) -> None:
        self.vocab = vocab = tokenizer.vocab
        self.bar = vocab["Bar_None"]
        self.pos_per_beat = tokenizer.config.max_num_pos_per_beat

        def table(prefix: str, values: range) -> np.ndarray:
            return np.array([vocab.get(f"{prefix}_{v}", -1) for v in values], dtype=np.int64)

        self.pitch = table("Pitch", range(128))
        self.drum = table("PitchDrum", range(128))
        self.velocity = table("Velocity", range(128))
        self.program = table("Program", range(-1, 128))  # index: program + 1 (drums are -1)
        self._tpb_tokens = tokenizer._tpb_ticks_to_tokens  # miditok's own duration table
        self._durations: dict[tuple[int, int], int] = {}

    def duration(self, tpb: int, ticks: int) -> int:
        got = self._durations.get((tpb, ticks))
        if got is None:
            got = self.vocab[f"Duration_{self._tpb_tokens[tpb][ticks]}"]
            self._durations[(tpb, ticks)] = got
        return got

    def units(self, numerator: int, denominator: int, tpq: int) -> tuple[int, int]:
        """Ticks per bar and per position under a time signature."""
        per_beat = compute_ticks_per_beat(denominator, tpq)
        bar = compute_ticks_per_bar(symusic.TimeSignature(0, numerator, denominator), tpq)
        return bar, per_beat // self.pos_per_beat


# Tables per tokenizer (REMI is unhashable). Holding the tokenizer keeps its id from being
# reused by another one while its tables are cached.
_TABLES: dict[int, tuple[REMI, _Ids]] = {}


def _tables(tokenizer: REMI) -> _Ids:
    held = _TABLES.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:
        held = _TABLES[id(tokenizer)] = (tokenizer, _Ids(tokenizer))
    return held[1]


def _lookup(table: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    ids = table[values]
    if (ids < 0).any():
        raise KeyError(f"{what}_{int(values[ids < 0][0])} not in the vocabulary")
    return ids


def encode_ids(tokenizer: REMI, score: symusic.Score) -> list[int]:
    """The ids `tokenizer.encode(score).ids` returns, for a tokenizer `supports` accepts."""
    t = _tables(tokenizer)
    score = tokenizer.preprocess_score(score)
    tpq = score.ticks_per_quarter

    # Items in the order miditok sorts stably by time: time signatures, tempos, then the
    # notes track by track. An item is one token (global) or four (Program, Pitch, Velocity,
    # Duration).
    sigs = [(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures]
    glob = [(time, t.vocab[f"TimeSig_{n}/{d}"]) for time, n, d in sigs]
    glob += [(tp.time, t.vocab[f"Tempo_{round(tp.tempo, 2)}"]) for tp in score.tempos]
    times = [np.array([g[0] for g in glob], dtype=np.int64)]
    rows = [np.array([[g[1], -1, -1, -1] for g in glob], dtype=np.int64).reshape(-1, 4)]
    tpb_table = get_score_ticks_per_beat(score) if sigs else np.array([[score.end(), tpq]])
    for track in score.tracks:
        notes = track.notes.numpy()
        start = notes["time"].astype(np.int64)
        if not len(start):
            continue
        row = np.empty((len(start), 4), dtype=np.int64)
        row[:, 0] = t.program[(-1 if track.is_drum else track.program) + 1]
        pitches = t.drum if track.is_drum else t.pitch
        row[:, 1] = _lookup(pitches, notes["pitch"].astype(np.int64), "Pitch")
        row[:, 2] = _lookup(t.velocity, notes["velocity"].astype(np.int64), "Velocity")
        section = np.searchsorted(tpb_table[:, 0], start, side="right")
        tpb = tpb_table[np.minimum(section, len(tpb_table) - 1), 1]
        keys, inverse = np.unique(
            tpb << 32 | notes["duration"].astype(np.int64), return_inverse=True
        )
        row[:, 3] = np.array([t.duration(k >> 32, k & 0xFFFFFFFF) for k in keys.tolist()])[inverse]
        times.append(start)
        rows.append(row)

    time = np.concatenate(times)
    order = np.argsort(time, kind="stable")
    return _with_time_tokens(
        t, tpq, time[order].tolist(), np.concatenate(rows)[order].tolist(), order.tolist(), sigs
    )


def _with_time_tokens(
    t: _Ids,
    tpq: int,
    times: list[int],
    rows: list[list[int]],
    order: list[int],
    sigs: list[tuple[int, int, int]],
) -> list[int]:
    """miditok REMI's `_add_time_events` on ints: Bar and TimeSig tokens at each new bar, a
    Position token at each new onset; a time signature takes effect after its own bar."""
    first = min(sigs, key=lambda s: s[0]) if sigs else (0, *TIME_SIGNATURE)
    sig_id = t.vocab[f"TimeSig_{first[1]}/{first[2]}"]
    per_bar, per_pos = t.units(first[1], first[2], tpq)
    out: list[int] = []
    bar = -1
    bar_at_sig = tick_at_sig = tick_at_bar = 0
    previous = -1
    for time, row, item in zip(times, rows, order, strict=True):
        is_sig = item < len(sigs)
        if time != previous:
            new_bars = bar_at_sig + (time - tick_at_sig) // per_bar - bar
            for k in range(new_bars):
                bar += 1
                tick_at_bar = tick_at_sig + (bar - bar_at_sig) * per_bar
                out.append(t.bar)
                if not (is_sig and k + 1 == new_bars):
                    out.append(sig_id)
            if not is_sig:
                out.append(t.vocab[f"Position_{(time - tick_at_bar) // per_pos}"])
            previous = time
        if is_sig:
            bar_at_sig += (time - tick_at_sig) // per_bar
            tick_at_sig = time
            _, num, den = sigs[item]
            sig_id = t.vocab[f"TimeSig_{num}/{den}"]
            per_bar, per_pos = t.units(num, den, tpq)
            previous -= 1  # the next item at this tick gets its own Position
            out.append(row[0])
        elif row[1] < 0:
            out.append(row[0])
        else:
            out.extend(row)
    return out
