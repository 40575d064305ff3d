"""MuseTok's MIDI -> REMI-like events conversion, bit-exact with the reference, parsed by symusic.

The reference (MuseTok `midi_analyzer` + `midi2corpus_strict(remove_overlap=True)` +
`corpus2events(repeat_beat=True)`) parses with miditoolkit and checks every triplet onset against
the list of all onsets, O(n^2). Here onsets and durations snap through per-bar lookup tables,
overlaps are cut with numpy, and the triplet check uses a set of the distinct onsets.

Conventions (ticks are at 480 per quarter after rescaling):
- one piano stream, notes stably sorted by (start, -pitch); only the first time signature counts;
- onsets snap to the 80/120-tick grid of their bar; an 80-grid onset stays a triplet only if a
  pattern of onsets backs it, otherwise it snaps to the 120 grid;
- durations snap to 8 (or, for triplets, 12) values, overlaps are cut at the next onset group,
  leading empty bars are dropped, the bar count follows the end of the last note in sort order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
import symusic

from midipipe.data.meters import map_meter
from midipipe.musetok.vocab import BEATS, EVENT_TO_ID, TIME_SIGNATURES

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 480
STEP = 40  # Beat token unit
MIN_PITCH, MAX_PITCH = 21, 108
# Sixteenth-based durations, then the triplet ones; ties go to the first in this order.
DURATIONS = np.array([120, 240, 360, 480, 720, 960, 1440, 1920, 80, 160, 320, 640], np.int64)
# Triplet patterns in the reference's order of trial: (step, number of onsets incl. the first).
_PATTERNS = ((80, 6), (160, 6), (320, 6), (80, 3), (160, 3), (320, 3), (640, 3))
_PITCH_TOKENS = np.array([f"Note_Pitch_{p}" for p in range(128)], dtype=object)


def _nearest(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest value of `grid` (in its own order) to each x; ties go to the earlier value."""
    return grid[np.abs(x[:, None] - grid[None, :]).argmin(axis=1)]


# Duration snap by lookup: row 0 sixteenth-based notes, row 1 triplet notes; raw lengths are
# clipped to 0..1920 first (below 0 the nearest is the smallest value, above 1920 it is 1920).
_LONGEST = int(DURATIONS.max())
_SNAP_DURATION = np.stack(
    [_nearest(DURATIONS[:8], np.arange(_LONGEST + 1)), _nearest(DURATIONS, np.arange(_LONGEST + 1))]
)
_IS_DURATION = np.zeros(_LONGEST + 1, bool)
_IS_DURATION[DURATIONS] = True


class MuseTokReject(ValueError):
    """A MIDI file the MuseTok conversion (or its vocabulary) cannot represent; str() says why."""


_METERS = {tuple(int(x) for x in ts.split("/")) for ts in TIME_SIGNATURES}
# Beats in the longest supported bar: which the dictionary has, and the nearest one it has.
_N_BEATS = max(int(TICKS_PER_BEAT * 4 * n / d) for n, d in _METERS) // STEP + 1
_KNOWN_BEAT = np.isin(np.arange(_N_BEATS), BEATS)
_SNAP_BEAT = _nearest(np.array(BEATS), np.arange(_N_BEATS))


@dataclass
class Fixes:
    """What the pipeline's conversion changed so that the vocabulary covers a piece (the
    reference rejects it instead): its meter mapped to one of the 12 (`midipipe.data.meters`),
    pitches outside 21-108 moved by octaves into the range, onsets on a beat the dictionary
    lacks (its long bars hold only the beats seen in training) moved to the nearest it has."""

    meter: str | None = None  # the original meter, "5/4", when it was mapped
    bars: int = 0  # bars in the mapped meter
    folded_notes: int = 0
    snapped_notes: int = 0


def _fold_pitches(pitch: np.ndarray) -> np.ndarray:
    """Pitches moved by whole octaves into MIN_PITCH..MAX_PITCH (the range spans 7 octaves)."""
    low = np.ceil((MIN_PITCH - pitch) / 12).clip(min=0).astype(np.int64)
    high = np.ceil((pitch - MAX_PITCH) / 12).clip(min=0).astype(np.int64)
    return pitch + 12 * low - 12 * high


@lru_cache(maxsize=16)
def _bar_tables(bar: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bar length, indexed by tick in bar: nearest onset on the 80/120 grid and on the 120
    grid (both include the bar end; ties go to the earlier one); Beat and Duration tokens."""
    ticks = np.arange(bar)
    snaps = []
    for steps in ((80, 120), (120,)):
        grid = np.unique(np.concatenate([*(np.arange(0, bar, s) for s in steps), [bar]]))
        i = np.searchsorted(grid, ticks)
        left, right = grid[np.maximum(i - 1, 0)], grid[i]
        snaps.append(np.where(ticks - left <= right - ticks, left, right))
    beats = np.array([f"Beat_{k}" for k in range(bar // STEP + 1)], dtype=object)
    durations = np.full(max(bar, _LONGEST) + 1, None, dtype=object)
    for d in {*DURATIONS.tolist(), bar}:
        durations[d] = f"Note_Duration_{d}"
    return snaps[0], snaps[1], beats, durations


def _triplet_onsets(onsets: list[int], bar: int) -> set[int]:
    """Onsets (multiples of 80, ascending) that the reference marks as triplets.

    X starts a triplet when the first matching pattern (in `_PATTERNS` order) has all its onsets
    present and ends before X's bar does; the whole pattern is then triplet. An onset already
    marked this way is not checked again, so it adds no pattern of its own (reference behaviour).
    """
    present = set(onsets)
    valid: set[int] = set()
    for x in onsets:
        if x in valid or not (
            x + 80 in present or x + 160 in present or x + 320 in present or x + 640 in present
        ):
            continue
        bar_end = (x // bar + 1) * bar
        for step, count in _PATTERNS:
            last = x + step * (count - 1)
            if last < bar_end and all(x + step * k in present for k in range(1, count)):
                valid.update(range(x, last + 1, step))
                break
    return valid


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
    start: np.ndarray,
    pitch: np.ndarray,
    end_raw: np.ndarray,
    score: symusic.Score,
    counts: list[int],
    data: bytes | None,
) -> np.ndarray:
    """Stable sort by (start, -pitch). Equal (start, pitch) notes of different instruments
    follow miditoolkit's instrument order (MIDI track, then first note-off) when it matters."""
    key = start * 128 + (127 - pitch)
    order = np.argsort(key, kind="stable")
    k = key[order]
    tie = k[1:] == k[:-1]
    if data is None or not tie.any():
        return order
    track = np.repeat(np.arange(len(counts)), counts)
    t = track[order]
    tie &= t[1:] != t[:-1]
    involved = set(t[:-1][tie].tolist()) | set(t[1:][tie].tolist())
    names = [score.tracks[i].name for i in involved]
    if len(set(names)) == len(names):
        return order  # different MIDI tracks (symusic names each track after its chunk)
    sizes = _midi_track_sizes(data, len(counts))
    if sizes is None:
        log.debug("MIDI track layout unclear; equal notes keep symusic's track order")
        return order
    first_off = np.full(len(counts), np.iinfo(np.int64).max)
    np.minimum.at(first_off, track, end_raw)
    chunk = np.repeat(np.arange(len(sizes)), sizes)
    rank = np.empty(len(counts), np.int64)
    rank[np.lexsort((np.arange(len(counts)), first_off, chunk))] = np.arange(len(counts))
    return np.lexsort((rank[track], 127 - pitch, start))


def _remove_overlap(onset: np.ndarray, end: np.ndarray, in_order: bool) -> np.ndarray:
    """Cut each note at the first later onset group (never the last one) that outlasts it.

    Reference rule: walk the groups after the note's own while the note still sounds at their
    onset; skip groups whose latest end the note reaches; at the first one it does not reach,
    cut there if the cut length is an allowed duration, and stop either way.
    """
    if in_order:
        on, end = onset, end.copy()
    else:
        order = np.argsort(onset, kind="stable")
        on, end = onset[order], end[order]
    new = np.concatenate(([True], on[1:] != on[:-1]))
    heads = np.flatnonzero(new)
    groups, group_end = on[heads], np.maximum.reduceat(end, heads)
    gid = np.cumsum(new) - 1
    last = groups.size - 1
    limit = np.minimum(np.searchsorted(groups, end), last)
    active = np.flatnonzero(limit > gid + 1)
    if active.size:
        g, lim, e = gid[active] + 1, limit[active], end[active]
        j = g[:, None] + np.arange(int((lim - g).max()))
        hit = (j < lim[:, None]) & (group_end.take(j, mode="clip") > e[:, None])
        first = hit.argmax(axis=1)
        cut_at = groups.take(g + first, mode="clip")
        # a cut is shorter than the note's snapped length (<= 1920), so it indexes _IS_DURATION
        cut = hit[np.arange(active.size), first] & _IS_DURATION[cut_at - on[active]]
        end[active[cut]] = cut_at[cut]
    if in_order:
        return end
    out = np.empty_like(end)
    out[order] = end
    return out


def score_to_events(score: symusic.Score) -> list[str]:
    """MuseTok events of a symusic score (tick time), exactly as the reference converter gives.

    A bare Score lacks the MIDI track layout, so notes with equal start and pitch in different
    instruments of one MIDI track keep symusic's order; `midi_to_events` resolves those too.
    """
    return _score_events(score, None)


def _score_events(
    score: symusic.Score, data: bytes | None, fixes: Fixes | None = None
) -> list[str]:
    if not isinstance(score, symusic.core.ScoreTick):
        score = score.to("tick")
    if score.note_num() == 0:
        raise MuseTokReject("empty MIDI: no notes")
    arrays = [t.notes.numpy() for t in score.tracks]
    start = np.concatenate([a["time"] for a in arrays], dtype=np.int64)
    dur = np.concatenate([a["duration"] for a in arrays], dtype=np.int64)
    pitch = np.concatenate([a["pitch"] for a in arrays], dtype=np.int64)
    end_raw = start + dur
    tpq = score.ticks_per_quarter
    if tpq != TICKS_PER_BEAT:  # the reference truncates a float rescale of start and length
        start = (start / tpq * TICKS_PER_BEAT).astype(np.int64)
        dur = (dur / tpq * TICKS_PER_BEAT).astype(np.int64)
    if len(score.time_signatures):
        ts = score.time_signatures[0]
        num, den = ts.numerator, ts.denominator
    else:
        num, den = 4, 4
    if fixes is not None and (num, den) not in _METERS:
        fixes.meter = f"{num}/{den}"
        num, den = map_meter((num, den), _METERS)[0]
    bar = int(TICKS_PER_BEAT * (4 * num / den))
    if bar <= 0:
        raise MuseTokReject(f"unsupported time signature {num}/{den}: bar shorter than a tick")
    snap_full, snap_normal, beat_tokens, duration_tokens = _bar_tables(bar)

    counts = [a["time"].size for a in arrays]
    order = _reference_order(start, pitch, end_raw, score, counts, data)
    start, pitch = start[order], pitch[order]
    end = start + dur[order]

    # --- onsets: 80/120 grid; 80-grid onsets without a triplet pattern move to the 120 grid --- #
    bar_start = start // bar * bar
    within = start - bar_start
    onset = bar_start + snap_full[within]
    candidate = onset % 80 == 0
    triplets = _triplet_onsets(list(dict.fromkeys(onset[candidate].tolist())), bar)
    if triplets:
        known = np.array(sorted(triplets))
        triplet = candidate & (known[np.searchsorted(known, onset) % known.size] == onset)
    else:
        triplet = np.zeros_like(candidate)
    onset = np.where(candidate & ~triplet, bar_start + snap_normal[within], onset)

    # --- durations snap from the quantized onset, then overlaps are cut --- #
    end = onset + _SNAP_DURATION[triplet.view(np.int8), np.clip(end - onset, 0, _LONGEST)]
    in_order = bool((onset[1:] >= onset[:-1]).all())  # almost always: onsets follow starts
    end = _remove_overlap(onset, end, in_order)

    # --- bars: drop leading empty bars; the last note in sort order sets the bar count --- #
    offset = int(onset[0]) // bar
    n_bars = math.ceil(int(end[-1]) / bar) - offset
    if n_bars <= 0:
        raise MuseTokReject("no bars: the last note ends before the first onset's bar")
    t = onset - offset * bar
    length = np.minimum(end - onset, bar)
    bar_idx = t // bar
    pos = t - bar_idx * bar
    if not (in_order and bar % STEP == 0 and t[-1] < n_bars * bar):
        # visit order: bar, onset, sort order; off-step onsets and notes past the end are dropped
        emit = np.flatnonzero((pos % STEP == 0) & (bar_idx >= 0) & (bar_idx < n_bars))
        emit = emit[np.argsort(t[emit], kind="stable")]
        bar_idx, pos, pitch, length = bar_idx[emit], pos[emit], pitch[emit], length[emit]
    bad = (pitch < MIN_PITCH) | (pitch > MAX_PITCH)
    if bad.any() and fixes is not None:
        fixes.folded_notes += int(bad.sum())
        pitch = _fold_pitches(pitch)
    elif bad.any():
        raise MuseTokReject(f"invalid pitch value {int(pitch[bad][0])}")

    # --- tokens: Bar_None, (Beat, Note_Pitch, Note_Duration) per note, Time_Signature; EOS --- #
    n = bar_idx.size
    per_bar = np.bincount(bar_idx, minlength=n_bars)
    bar_at = 2 * np.arange(n_bars) + 3 * (np.cumsum(per_bar) - per_bar)
    tokens = np.empty(2 * n_bars + 3 * n + 1, dtype=object)
    tokens[bar_at] = "Bar_None"
    tokens[bar_at + 3 * per_bar + 1] = f"Time_Signature_{num}/{den}"
    tokens[-1] = "EOS_None"
    note_at = 2 * bar_idx + 1 + 3 * np.arange(n)
    beat = pos // STEP
    if fixes is not None:
        unseen = ~_KNOWN_BEAT[beat]
        fixes.snapped_notes += int(unseen.sum())
        beat = np.where(unseen, _SNAP_BEAT[beat], beat)
    tokens[note_at] = beat_tokens[beat]
    tokens[note_at + 1] = _PITCH_TOKENS[pitch]
    tokens[note_at + 2] = duration_tokens[length]
    if fixes is not None and fixes.meter is not None:
        fixes.bars = n_bars
    return tokens.tolist()


def midi_to_events(src: bytes | str | PathLike, fixes: Fixes | None = None) -> list[str]:
    """Parse MIDI bytes or a path with symusic and convert; any failure is a MuseTokReject.

    With `fixes`, a meter or pitch the vocabulary lacks is mapped (and recorded there) rather
    than rejected; without, the output is the reference's, rejections included."""
    data = bytes(src) if isinstance(src, bytes | bytearray | memoryview) else Path(src).read_bytes()
    try:
        score = symusic.Score.from_midi(data)
    except (RuntimeError, ValueError) as exc:
        raise MuseTokReject(f"cannot parse MIDI: {exc}") from exc
    return _score_events(score, data, fixes)


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


def encode_midi(
    src: bytes | str | PathLike, fixes: Fixes | None = None
) -> tuple[list[int], list[int]]:
    """(ids, bar_starts) of one MIDI file: bar i is `ids[bar_starts[i]:bar_starts[i + 1]]`.
    `fixes`: as in `midi_to_events`."""
    events = midi_to_events(src, fixes)
    return events_to_ids(events), bar_positions(events)


def encode_score(score: symusic.Score, data: bytes | None = None) -> tuple[list[int], list[int]]:
    """`encode_midi` of an already parsed score, for callers that also read the score itself;
    `data`, its MIDI bytes, lets ties in note order follow the file's track layout as
    `encode_midi` does."""
    events = _score_events(score, data)
    return events_to_ids(events), bar_positions(events)
