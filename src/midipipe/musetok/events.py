"""MuseTok's MIDI -> REMI-like events conversion, bit-exact with the reference, parsed by symusic.

The reference (MuseTok `midi_analyzer` + `midi2corpus_strict(remove_overlap=True)` +
`corpus2events(repeat_beat=True)`) parses with miditoolkit and checks every triplet onset against
the list of all onsets, O(n^2). Here every step is vectorised with numpy; only the onsets that
start a triplet pattern are walked in Python, because the reference's "already part of a triplet"
rule chains from one onset to the next.

Conventions (ticks are at 480 per quarter after rescaling):
- one piano stream, notes stably sorted by (start, -pitch); only the first time signature counts;
- onsets snap to the 80/120-tick grid of their bar; an 80-grid onset stays a triplet only if a
  pattern of later onsets backs it, otherwise it snaps to the 120 grid;
- durations snap to 8 (or, for triplets, 12) values, overlaps are cut at the next onset group,
  leading empty bars are dropped, the bar count follows the end of the last note in sort order.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
import symusic

from midipipe.musetok.vocab import EVENT_TO_ID

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 480
STEP = 40  # Beat token unit
TRIPLET_STEP = 80
NORMAL_STEP = 120
MIN_PITCH, MAX_PITCH = 21, 108
DURATIONS = np.array([120, 240, 360, 480, 720, 960, 1440, 1920, 80, 160, 320, 640], np.int64)
N_NORMAL_DURATIONS = 8  # the first 8; triplet notes may also take the last 4
# Triplet patterns in the reference's order of trial: (step, number of onsets incl. the first).
_PATTERNS = ((80, 6), (160, 6), (320, 6), (80, 3), (160, 3), (320, 3), (640, 3))
_OFFSETS = np.array(sorted({s * k for s, c in _PATTERNS for k in range(1, c)}), np.int64)
_PATTERN_COLS = [np.searchsorted(_OFFSETS, [s * k for k in range(1, c)]) for s, c in _PATTERNS]
_PATTERN_LAST = np.array([s * (c - 1) for s, c in _PATTERNS], np.int64)
_PITCH_TOKENS = np.array([f"Note_Pitch_{p}" for p in range(128)], dtype=object)


class MuseTokReject(ValueError):
    """A MIDI file the MuseTok conversion (or its vocabulary) cannot represent; str() says why."""


@lru_cache(maxsize=64)
def _grids(bar: int) -> tuple[np.ndarray, np.ndarray]:
    """Allowed onsets inside a bar: triplet+sixteenth grid (with bar end) and sixteenth grid."""
    full = np.unique(np.concatenate([np.arange(0, bar, 80), np.arange(0, bar, 120), [bar]]))
    normal = np.unique(np.concatenate([np.arange(0, bar, 120), [bar]]))
    return full, normal


@lru_cache(maxsize=64)
def _beat_tokens(bar: int) -> np.ndarray:
    return np.array([f"Beat_{k}" for k in range(bar // STEP + 1)], dtype=object)


def _snap(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest grid value to each x (0 <= x < grid[-1]); an exact tie goes to the smaller one."""
    i = np.searchsorted(grid, x)
    right = grid[i]
    left = grid[np.maximum(i - 1, 0)]
    return np.where(x - left <= right - x, left, right)


def _triplet_onsets(onsets: np.ndarray, bar: int) -> np.ndarray:
    """Sorted onsets (multiples of 80) that the reference marks as triplets.

    An onset X is a triplet when the first matching pattern (in `_PATTERNS` order) has all its
    onsets present and ends before X's bar ends, or when an earlier onset that itself started a
    pattern listed X. An onset already listed does not add its own pattern (reference behaviour).
    """
    if onsets.size == 0:
        return onsets
    wanted = onsets[:, None] + _OFFSETS[None, :]
    pos = np.minimum(np.searchsorted(onsets, wanted), onsets.size - 1)
    present = onsets[pos] == wanted
    bar_end = (onsets // bar + 1) * bar
    ok = np.stack(
        [present[:, cols].all(axis=1) for cols in _PATTERN_COLS], axis=1
    ) & (onsets[:, None] + _PATTERN_LAST[None, :] < bar_end[:, None])
    starters = np.flatnonzero(ok.any(axis=1))
    if starters.size == 0:
        return starters.astype(np.int64)
    first = ok[starters].argmax(axis=1)
    valid: set[int] = set()
    for x, k in zip(onsets[starters].tolist(), first.tolist(), strict=True):
        if x in valid:
            continue
        step, count = _PATTERNS[k]
        valid.update(range(x, x + step * count, step))
    return np.array(sorted(valid), np.int64)


def _collect_notes(score: symusic.Score) -> tuple[np.ndarray, ...]:
    """(start, duration, pitch, track index) of all notes, tracks merged in symusic's order."""
    arrays = [(k, t.notes.numpy()) for k, t in enumerate(score.tracks) if len(t.notes)]
    start = np.concatenate([a["time"] for _, a in arrays]).astype(np.int64)
    dur = np.concatenate([a["duration"] for _, a in arrays]).astype(np.int64)
    pitch = np.concatenate([a["pitch"] for _, a in arrays]).astype(np.int64)
    track = np.repeat([k for k, _ in arrays], [a["time"].size for _, a in arrays])
    return start, dur, pitch, track


def _midi_track_sizes(data: bytes, n_tracks: int) -> list[int] | None:
    """How many symusic tracks each MIDI track chunk yields (None when the layout is unclear).

    symusic splits a MIDI track into one track per (channel, program) and orders them by that
    key, while miditoolkit orders instruments by their first note-off: only within one MIDI
    track can the two orders differ. Multi-chunk files are split and parsed chunk by chunk.
    """
    if data[:4] != b"MThd" or len(data) < 14:
        return None
    pos = 8 + int.from_bytes(data[4:8], "big")
    chunks = []
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        if data[pos : pos + 4] == b"MTrk":
            chunks.append(data[pos : pos + 8 + size])
        pos += 8 + size
    if len(chunks) <= 1:
        return [n_tracks]
    header = b"MThd" + (6).to_bytes(4, "big") + b"\x00\x00\x00\x01" + data[12:14]
    try:
        sizes = [len(symusic.Score.from_midi(header + c).tracks) for c in chunks]
    except (RuntimeError, ValueError):
        return None
    return sizes if sum(sizes) == n_tracks else None


def _reference_order(
    start: np.ndarray, pitch: np.ndarray, end_raw: np.ndarray, track: np.ndarray, data: bytes | None
) -> np.ndarray:
    """Stable sort by (start, -pitch); equal (start, pitch) notes follow miditoolkit's
    instrument order (MIDI track, then first note-off) when that changes the result."""
    order = np.argsort(start * 128 + (127 - pitch), kind="stable")
    s, p, t, e = start[order], pitch[order], track[order], end_raw[order]
    tie = np.flatnonzero((s[1:] == s[:-1]) & (p[1:] == p[:-1]))
    if data is None or tie.size == 0:
        return order
    heads = np.flatnonzero(np.diff(np.concatenate([[-1], s]) * 128 + np.concatenate([[-1], p])))
    mixed = (np.maximum.reduceat(t, heads) != np.minimum.reduceat(t, heads)) & (
        np.maximum.reduceat(e, heads) != np.minimum.reduceat(e, heads)
    )
    if not mixed.any():
        return order
    n_tracks = int(track.max()) + 1
    sizes = _midi_track_sizes(data, n_tracks)
    if sizes is None:
        log.debug("MIDI track layout unclear; ties keep symusic's track order")
        return order
    first_off = np.full(n_tracks, np.iinfo(np.int64).max)
    np.minimum.at(first_off, track, end_raw)
    chunk = np.repeat(np.arange(len(sizes)), sizes)
    rank = np.empty(n_tracks, np.int64)
    rank[np.lexsort((np.arange(n_tracks), first_off, chunk))] = np.arange(n_tracks)
    return np.lexsort((rank[track], 127 - pitch, start))


def score_to_events(score: symusic.Score) -> list[str]:
    """MuseTok events of a symusic score (tick time), exactly as the reference converter gives.

    A bare Score lacks the MIDI track layout, so notes with equal start and pitch in different
    instruments of one MIDI track keep symusic's order; `midi_to_events` resolves those too.
    """
    return _score_events(score, None)


def _score_events(score: symusic.Score, data: bytes | None) -> list[str]:
    if not isinstance(score, symusic.core.ScoreTick):
        score = score.to("tick")
    if score.note_num() == 0:
        raise MuseTokReject("empty MIDI: no notes")
    start, dur, pitch, track = _collect_notes(score)
    end_raw = start + dur
    tpq = score.ticks_per_quarter
    if tpq != TICKS_PER_BEAT:  # the reference truncates a float rescale of start and length
        start = (start / tpq * TICKS_PER_BEAT).astype(np.int64)
        dur = (dur / tpq * TICKS_PER_BEAT).astype(np.int64)
    end = start + dur

    if len(score.time_signatures):
        ts = score.time_signatures[0]
        num, den = ts.numerator, ts.denominator
    else:
        num, den = 4, 4
    bar = int(TICKS_PER_BEAT * (4 * num / den))
    if bar <= 0:
        raise MuseTokReject(f"unsupported time signature {num}/{den}: bar shorter than a tick")

    order = _reference_order(start, pitch, end_raw, track, data)
    start, end, pitch = start[order], end[order], pitch[order]

    # --- onsets: 80/120 grid, triplet check, re-snap of lone 80-grid onsets --- #
    full, normal = _grids(bar)
    bar_start = start // bar * bar
    within = start - bar_start
    onset = bar_start + _snap(full, within)
    candidate = onset % TRIPLET_STEP == 0
    triplets = _triplet_onsets(np.unique(onset[candidate]), bar)
    triplet = candidate & np.isin(onset, triplets)
    lone = candidate & ~triplet
    if lone.any():
        onset[lone] = bar_start[lone] + _snap(normal, within[lone])

    # --- durations: nearest allowed value, first in DURATIONS order on ties --- #
    dist = np.abs((end - onset)[:, None] - DURATIONS[None, :])
    dist[~triplet, N_NORMAL_DURATIONS:] = np.iinfo(np.int64).max
    end = onset + DURATIONS[dist.argmin(axis=1)]

    end = _remove_overlap(onset, end)

    # --- bars --- #
    offset = int(onset[0]) // bar
    n_bars = math.ceil(int(end[-1]) / bar) - offset
    if n_bars <= 0:
        raise MuseTokReject("no bars: the last note ends before the first onset's bar")
    t = onset - offset * bar
    length = np.minimum(end - onset, bar)
    bar_idx = t // bar
    pos = t - bar_idx * bar
    emit = np.flatnonzero((pos % STEP == 0) & (bar_idx >= 0) & (bar_idx < n_bars))
    emit = emit[np.argsort(t[emit], kind="stable")]
    bar_idx, pos, pitch, length = bar_idx[emit], pos[emit], pitch[emit], length[emit]
    bad = np.flatnonzero((pitch < MIN_PITCH) | (pitch > MAX_PITCH))
    if bad.size:
        raise MuseTokReject(f"invalid pitch value {int(pitch[bad[0]])}")
    return _assemble(bar_idx, pos, pitch, length, n_bars, bar, f"{num}/{den}")


def _remove_overlap(onset: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Cut each note at the first later onset group (never the last) that outlasts it.

    Reference rule: walk the groups after the note's own while the note still sounds at their
    onset; skip groups whose latest end the note reaches; at the first one it does not reach,
    cut there if the cut length is an allowed duration, and stop either way.
    """
    groups, gid = np.unique(onset, return_inverse=True)
    n_groups = groups.size
    if n_groups < 3:
        return end
    group_end = np.zeros(n_groups, np.int64)
    np.maximum.at(group_end, gid, end)
    limit = np.minimum(np.searchsorted(groups, end), n_groups - 1)
    active = np.flatnonzero(limit > gid + 1)
    if active.size == 0:
        return end
    g, lim, e = gid[active], limit[active], end[active]
    span = int((lim - g - 1).max())
    j = g[:, None] + 1 + np.arange(span)[None, :]
    hit = (j < lim[:, None]) & (group_end[np.minimum(j, n_groups - 1)] > e[:, None])
    found = hit.any(axis=1)
    j_hit = j[np.arange(active.size), hit.argmax(axis=1)]
    cut_at = groups[np.minimum(j_hit, n_groups - 1)]
    cut = found & np.isin(cut_at - onset[active], DURATIONS)
    end = end.copy()
    end[active[cut]] = cut_at[cut]
    return end


def _assemble(
    bar_idx: np.ndarray,
    pos: np.ndarray,
    pitch: np.ndarray,
    length: np.ndarray,
    n_bars: int,
    bar: int,
    time_sig: str,
) -> list[str]:
    """Bar_None, (Beat, Note_Pitch, Note_Duration) per note, Time_Signature per bar; final EOS."""
    n = bar_idx.size
    per_bar = np.bincount(bar_idx, minlength=n_bars)
    before = np.concatenate([[0], np.cumsum(per_bar)[:-1]])
    bar_at = 2 * np.arange(n_bars) + 3 * before
    tokens = np.empty(2 * n_bars + 3 * n + 1, dtype=object)
    tokens[bar_at] = "Bar_None"
    tokens[bar_at + 3 * per_bar + 1] = f"Time_Signature_{time_sig}"
    tokens[-1] = "EOS_None"
    note_at = 2 * bar_idx + 1 + 3 * np.arange(n)
    tokens[note_at] = _beat_tokens(bar)[pos // STEP]
    tokens[note_at + 1] = _PITCH_TOKENS[pitch]
    values, inverse = np.unique(length, return_inverse=True)
    tokens[note_at + 2] = np.array([f"Note_Duration_{v}" for v in values.tolist()], object)[
        inverse
    ]
    return tokens.tolist()


def midi_to_events(src: bytes | str | PathLike) -> list[str]:
    """Parse MIDI bytes or a path with symusic and convert; any failure is a MuseTokReject."""
    data = bytes(src) if isinstance(src, bytes | bytearray | memoryview) else Path(src).read_bytes()
    try:
        score = symusic.Score.from_midi(data)
    except (RuntimeError, ValueError) as exc:
        raise MuseTokReject(f"cannot parse MIDI: {exc}") from exc
    return _score_events(score, data)


def bar_positions(events: list[str]) -> list[int]:
    """Index of every `Bar_None` in `events` (the reference's bar positions)."""
    return [i for i, e in enumerate(events) if e == "Bar_None"]


def events_to_ids(events: list[str]) -> list[int]:
    """Vocabulary ids; the first event the MuseTok dictionary lacks rejects the whole file."""
    try:
        return [EVENT_TO_ID[e] for e in events]
    except KeyError as exc:
        raise MuseTokReject(
            f"unsupported event {exc.args[0]!r} not in the MuseTok vocabulary"
        ) from None


def encode_midi(src: bytes | str | PathLike) -> tuple[list[int], list[int]]:
    """(ids, bar_starts) of one MIDI file: bar i is `ids[bar_starts[i]:bar_starts[i + 1]]`."""
    events = midi_to_events(src)
    return events_to_ids(events), bar_positions(events)
