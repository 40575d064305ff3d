"""Features of one piece: the objective metrics generated music is judged by, and a bag of
features for the composer classifier.

The six metrics follow MusPy's definitions (Dong et al., 2020), so figures compare with the
literature: pitch-class entropy (bits), scale consistency (best share of notes in one
diatonic scale), groove consistency (1 - mean Hamming distance of consecutive bars' onset
grids), empty-beat rate (beats where no note starts), polyphony (mean distinct pitches
sounding, over the time something sounds) and pitch range (semitones). Drums have no pitch:
they count for the rhythm metrics only. A metric a piece cannot define (groove with one bar,
anything with no pitched note) is NaN, and the comparison leaves that piece out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import symusic

METRICS = (
    "pitch_class_entropy",
    "scale_consistency",
    "groove_consistency",
    "empty_beat_rate",
    "polyphony",
    "pitch_range",
)
GRID = 24  # onset grid steps per quarter note: 16ths, 32nds and triplets all land on it
MAJOR = (0, 2, 4, 5, 7, 9, 11)  # natural minor is a rotation: 12 roots cover both
DURATION_EDGES = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, math.inf)  # in quarter notes
FEATURES = (
    *METRICS,
    "notes_per_beat",
    "pitch_mean",
    "pitch_std",
    "velocity_mean",
    *(f"pc_{k}" for k in range(12)),
    *(f"dur_{lo:g}_{hi:g}" for lo, hi in zip(DURATION_EDGES, DURATION_EDGES[1:], strict=False)),
)
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
INSTRUMENTS = (*(f"gm_family_{k}" for k in range(16)), "drums")  # 16 GM families of 8 programs


@dataclass
class Notes:
    """All notes of a score in quarter notes, and where its bars start."""

    onset: np.ndarray  # float, quarter notes
    duration: np.ndarray
    pitch: np.ndarray  # int
    velocity: np.ndarray
    drum: np.ndarray  # bool
    bars: np.ndarray  # bar start times (quarter notes), up to the end
    bar_lengths: np.ndarray  # each bar's length (quarter notes)

    @property
    def pitched(self) -> np.ndarray:
        return ~self.drum


def _bar_lines(score: symusic.Score, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Bar starts and lengths in ticks, following every time-signature change (4/4 before any)."""
    sigs = sorted(score.time_signatures, key=lambda ts: ts.time)
    if not sigs or sigs[0].time > 0:
        sigs = [symusic.TimeSignature(0, 4, 4), *sigs]
    starts, lengths = [], []
    for i, ts in enumerate(sigs):
        seg_end = sigs[i + 1].time if i + 1 < len(sigs) else max(end, ts.time + 1)
        bar = max(1, score.ticks_per_quarter * 4 * ts.numerator // ts.denominator)
        t = ts.time
        while t < seg_end and (t < end or not starts):
            starts.append(t)
            lengths.append(bar)
            t += bar
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def notes_of(score: symusic.Score) -> Notes:
    tpq = score.ticks_per_quarter
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("time", "duration", "pitch", "velocity")}
    drum: list[np.ndarray] = []
    for track in score.tracks:
        arr = track.notes.numpy()
        for k in cols:
            cols[k].append(np.asarray(arr[k], dtype=np.int64))
        drum.append(np.full(len(arr["time"]), track.is_drum))
    flat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in cols.items()}
    starts, lengths = _bar_lines(score, int(score.end()))
    return Notes(
        onset=flat["time"] / tpq,
        duration=flat["duration"] / tpq,
        pitch=flat["pitch"],
        velocity=flat["velocity"],
        drum=np.concatenate(drum) if drum else np.zeros(0, bool),
        bars=starts / tpq,
        bar_lengths=lengths / tpq,
    )


# -- the six metrics -------------------------------------------------------------------------


def pitch_class_counts(n: Notes) -> np.ndarray:
    return np.bincount(n.pitch[n.pitched] % 12, minlength=12)


def pitch_class_histogram(n: Notes) -> np.ndarray:
    """Share of pitched notes per pitch class (zeros when there is none)."""
    counts = pitch_class_counts(n).astype(float)
    return counts / counts.sum() if counts.sum() else counts


def pitch_class_entropy(n: Notes) -> float:
    hist = pitch_class_histogram(n)
    if not hist.any():
        return math.nan
    p = hist[hist > 0]
    return float(max(0.0, -(p * np.log2(p)).sum()))


def scale_consistency(n: Notes) -> float:
    """Largest share of pitched notes inside one major (or its relative minor) scale."""
    counts = pitch_class_counts(n)
    if not counts.any():
        return math.nan
    best = max(counts[[(root + s) % 12 for s in MAJOR]].sum() for root in range(12))
    return float(best / counts.sum())


def groove_consistency(n: Notes) -> float:
    """1 - mean Hamming distance between consecutive bars' onset grids (per grid step)."""
    if len(n.bars) < 2 or not len(n.onset):
        return math.nan
    bar = np.searchsorted(n.bars, n.onset, side="right") - 1
    steps = np.round((n.onset - n.bars[bar]) * GRID).astype(np.int64)
    size = int(np.ceil(n.bar_lengths.max() * GRID))
    grid = np.zeros((len(n.bars), size + 1), dtype=bool)
    grid[bar, np.clip(steps, 0, size)] = True
    lengths = np.maximum(np.ceil(np.maximum(n.bar_lengths[:-1], n.bar_lengths[1:]) * GRID), 1)
    dist = (grid[:-1] != grid[1:]).sum(1) / lengths
    return float(1.0 - dist.mean())


def empty_beat_rate(n: Notes) -> float:
    """Share of beats (quarter notes, up to the last note's end) in which no note starts."""
    if not len(n.onset):
        return math.nan
    n_beats = max(1, int(np.ceil((n.onset + n.duration).max() - 1e-9)))
    busy = np.unique(np.floor(n.onset).astype(np.int64).clip(0, n_beats - 1))
    return float(1.0 - len(busy) / n_beats)


def polyphony(n: Notes) -> float:
    """Mean number of distinct pitches sounding, over the time at least one sounds."""
    keep = n.pitched & (n.duration > 0)
    if not keep.any():
        return math.nan
    events: list[tuple[float, int]] = []
    pitch, onset, end = n.pitch[keep], n.onset[keep], n.onset[keep] + n.duration[keep]
    for p in np.unique(pitch):  # merge overlapping notes of one pitch: a pitch counts once
        sel = pitch == p
        order = np.argsort(onset[sel])
        lo, hi = onset[sel][order], end[sel][order]
        cur_lo, cur_hi = lo[0], hi[0]
        for a, b in zip(lo[1:], hi[1:], strict=True):
            if a <= cur_hi:
                cur_hi = max(cur_hi, b)
            else:
                events += [(cur_lo, 1), (cur_hi, -1)]
                cur_lo, cur_hi = a, b
        events += [(cur_lo, 1), (cur_hi, -1)]
    events.sort()
    times = np.array([t for t, _ in events])
    count = np.cumsum([d for _, d in events])
    span = np.diff(times)
    sounding = count[:-1] > 0
    total = span[sounding].sum()
    return float((count[:-1][sounding] * span[sounding]).sum() / total) if total else math.nan


def pitch_range(n: Notes) -> float:
    p = n.pitch[n.pitched]
    return float(p.max() - p.min()) if len(p) else math.nan


_METRIC_FNS = {
    "pitch_class_entropy": pitch_class_entropy,
    "scale_consistency": scale_consistency,
    "groove_consistency": groove_consistency,
    "empty_beat_rate": empty_beat_rate,
    "polyphony": polyphony,
    "pitch_range": pitch_range,
}


def piece_metrics(score: symusic.Score | Notes) -> dict[str, float]:
    """The six metrics of one piece (NaN where undefined)."""
    n = score if isinstance(score, Notes) else notes_of(score)
    return {name: _METRIC_FNS[name](n) for name in METRICS}


# -- the classifier's bag of features --------------------------------------------------------


def features(score: symusic.Score) -> np.ndarray:
    """`FEATURES` of one piece as floats; undefined values are 0 (the scaler centres them)."""
    n = notes_of(score)
    metrics = list(piece_metrics(n).values())
    pitched = n.pitch[n.pitched]
    span = max(1.0, float((n.onset + n.duration).max())) if len(n.onset) else 1.0
    dur = np.histogram(n.duration, bins=DURATION_EDGES)[0].astype(float)
    extra = [
        len(np.unique(n.onset)) / span,
        pitched.mean() / 127 if len(pitched) else 0.0,
        pitched.std() / 12 if len(pitched) else 0.0,
        n.velocity.mean() / 127 if len(n.velocity) else 0.0,
    ]
    out = np.concatenate(
        [metrics, extra, pitch_class_histogram(n), dur / max(1.0, dur.sum())]
    ).astype(np.float64)
    return np.nan_to_num(out, nan=0.0)


def instruments(score: symusic.Score) -> np.ndarray:
    """`INSTRUMENTS`: share of notes per General MIDI family (piano, ..., strings, ensemble)."""
    counts = np.zeros(len(INSTRUMENTS))
    for track in score.tracks:
        counts[-1 if track.is_drum else track.program // 8] += track.note_num()
    return counts / counts.sum() if counts.sum() else counts


def key_correlations(histograms: np.ndarray) -> np.ndarray:
    """[N, 24] Pearson correlation of each pitch-class histogram row with the 12 major, then
    the 12 minor Krumhansl-Kessler key profiles (0 for a flat histogram)."""
    profiles = np.stack([np.roll(p, k) for p in (MAJOR_PROFILE, MINOR_PROFILE) for k in range(12)])
    profiles = (profiles - profiles.mean(1, keepdims=True)) / profiles.std(1, keepdims=True)
    centred = histograms - histograms.mean(1, keepdims=True)
    norm = centred.std(1, keepdims=True)
    return np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 0) @ profiles.T / 12
