"""Chord qualities of a piece: valence cues the key-profile mode score misses. A minor-key
song can be full of major chords and the reverse; and sad and tense clips differ in how much
dissonance they hold rather than in their key (EMOPIA's weak axis is valence).

Every beat's sounding pitch classes (duration-weighted, drums excluded) are matched to the
chord templates below in all 12 roots (cosine similarity); a piece gets the share of its beats
whose best match is each quality, each beat weighted by log(1 + its notes' summed duration
in quarters), and a few summaries. Windows are quarter notes whatever the meter.
"""

from __future__ import annotations

import numpy as np
import symusic

from midipipe.emotion.rules import note_array

QUALITIES = {
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "sus4": (0, 5, 7),
    "dominant7": (0, 4, 7, 10),
    "major7": (0, 4, 7, 11),
    "minor7": (0, 3, 7, 10),
    "single": (0,),  # a lone pitch class (or octaves): no chord
    "fifth": (0, 7),
    # a bare third fits a major and a minor triad alike (A-C: F major or A minor): neither side
    "major_third": (0, 4),
    "minor_third": (0, 3),
}
HARMONY = (
    *(f"chord_{q}" for q in QUALITIES),
    "chord_fit",  # mean best-template cosine: how triadic the harmony is
    "major_minor",  # (major-like - minor-like) / their sum (maj, dom7, maj7 vs min, min7, dim)
    "dissonance",  # weight on sounding minor seconds and tritones / all sounding pairs
    "chord_changes",  # share of beats whose best chord differs from the previous beat's
)
_TEMPLATES = np.zeros((len(QUALITIES) * 12, 12))
for _q, _pcs in enumerate(QUALITIES.values()):
    for _root in range(12):
        _TEMPLATES[_q * 12 + _root, [(_root + i) % 12 for i in _pcs]] = 1.0
_TEMPLATES /= np.linalg.norm(_TEMPLATES, axis=1, keepdims=True)
_MAJOR_LIKE = [list(QUALITIES).index(q) for q in ("major", "dominant7", "major7")]
_MINOR_LIKE = [list(QUALITIES).index(q) for q in ("minor", "minor7", "diminished")]
_INTERVAL = np.abs(np.subtract.outer(np.arange(12), np.arange(12)))
_INTERVAL = np.minimum(_INTERVAL, 12 - _INTERVAL)  # interval class 0..6
_DISSONANT = np.isin(_INTERVAL, (1, 6)).astype(float)
_PAIRS = (_INTERVAL > 0).astype(float)


MAX_BEATS_A_NOTE = 32  # a longer note counts in its first 32 beats (a stray hour-long note)


def beat_chroma(score: symusic.Score) -> np.ndarray:
    """[beats with a sounding note, 12]: quarter-note windows' pitch classes, each note
    weighted by how long it sounds in the window (in quarters); beats without a note are left
    out, so a stray far-off note costs nothing."""
    tpq = score.ticks_per_quarter
    notes = note_array(score, drums=False)  # time, duration, pitch, velocity
    if not len(notes):
        return np.zeros((0, 12))
    start = notes[:, 0] / tpq
    end = start + np.maximum(notes[:, 1], 1) / tpq
    pc = notes[:, 2] % 12
    lo = np.floor(start).astype(np.int64)
    span = np.minimum(np.ceil(end).astype(np.int64) - lo, MAX_BEATS_A_NOTE)
    beats, classes, weights = [], [], []
    for k in range(int(span.max())):  # the k-th beat each note touches
        live = span > k
        beat = lo[live] + k
        overlap = np.minimum(end[live], beat + 1) - np.maximum(start[live], beat)
        beats.append(beat)
        classes.append(pc[live])
        weights.append(np.maximum(overlap, 0.0))
    occupied, row = np.unique(np.concatenate(beats), return_inverse=True)
    out = np.zeros((len(occupied), 12))
    np.add.at(out, (row, np.concatenate(classes)), np.concatenate(weights))
    return out


def harmony_features(score: symusic.Score) -> np.ndarray:
    """[len(HARMONY)] chord-quality shares and summaries (zeros for a piece without notes)."""
    chroma = beat_chroma(score)
    chroma = chroma[chroma.sum(1) > 0]
    out = np.zeros(len(HARMONY))
    if not len(chroma):
        return out
    unit = chroma / np.linalg.norm(chroma, axis=1, keepdims=True)
    fit = unit @ _TEMPLATES.T
    best = fit.argmax(1)
    quality = best // 12
    weight = np.log1p(chroma.sum(1))
    weight = weight / weight.sum()
    shares = np.bincount(quality, weight, len(QUALITIES))
    out[: len(QUALITIES)] = shares
    major, minor = shares[_MAJOR_LIKE].sum(), shares[_MINOR_LIKE].sum()
    out[len(QUALITIES)] = float(weight @ fit.max(1))
    out[len(QUALITIES) + 1] = (major - minor) / max(major + minor, 1e-9)
    pairs = np.einsum("bi,ij,bj->b", chroma, _PAIRS, chroma)
    dissonant = np.einsum("bi,ij,bj->b", chroma, _DISSONANT, chroma)
    out[len(QUALITIES) + 2] = float(dissonant.sum() / max(pairs.sum(), 1e-9))
    out[len(QUALITIES) + 3] = float((best[1:] != best[:-1]).mean()) if len(best) > 1 else 0.0
    return out
