"""Chords bottom-up (`generator.note_order: pitch`).

miditok writes the notes of one onset by (duration, pitch), track by track, so a chord's
pitches go up, then start again lower when a longer note comes. The issue-15 GPT, sampling
the pitch before it knows the duration, broke that order in a third of its steps and wrote
clusters: 23-31% of the intervals between neighbouring notes of its chords were one or two
semitones, against 0-1.6% in the real music of every composer (and the judge took such
clusters for Monteverdi, the most dissonant real composer). Sorted by pitch at each
position and program, a chord is a walk upwards whose every step is an interval above the
note before; sampling then only allows pitches above the last one at the position
(`sampling.SampleConfig.ascending`). The order says nothing about the music: the notes
decode the same.

In either order, stage 08 also counts how far each note of its training pieces lies from the
nearest pitch before it at its position and program, per composer (`chord_intervals`), and
sampling adds that log-probability to each pitch's logit (`generate.chord_prior`): in
miditok's order that alone took the clusters to 0-15% of chord steps and the judged
conditioning from 0.56-0.61 to 0.92-0.96 on the embedded corpus over three training seeds
(README, "The chord prior").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from midipipe.generator import TRAINING_FILE
from midipipe.generator.keys import KeyShift, Mapped

NOTE_ORDERS = ("tokenizer", "pitch")
INTERVALS_FILE = "intervals.json"  # the chord steps of a model's training pieces (stage 08)
_NOTE_KINDS = ("Program", "Pitch", "PitchDrum", "Velocity", "Duration")


class PitchOrder:
    """Sorts the notes at each position of REMI ids by (program, pitch)."""

    def __init__(self, vocab: dict[str, int]) -> None:
        size = max(vocab.values()) + 1
        self.pitch = np.full(size, -1, dtype=np.int64)  # id -> MIDI pitch (Pitch, PitchDrum)
        self.program = np.full(size, -2, dtype=np.int64)  # id -> program (-2: not a Program)
        self.in_note = np.zeros(size, dtype=bool)
        self.duration = np.zeros(size, dtype=bool)
        self.drum = np.zeros(size, dtype=bool)
        for token, i in vocab.items():
            kind, _, value = token.partition("_")
            self.in_note[i] = kind in _NOTE_KINDS
            self.duration[i] = kind == "Duration"
            if kind in ("Pitch", "PitchDrum"):
                self.pitch[i] = int(value)
                self.drum[i] = kind == "PitchDrum"
            elif kind == "Program":
                self.program[i] = int(value)

    def sort(self, ids: np.ndarray) -> np.ndarray:
        """`ids` with each position's notes (a Program, if any, then Pitch, Velocity,
        Duration) reordered by program, then pitch; everything else stays where it is. A
        note cut off by the end of `ids` stays last."""
        ids = np.asarray(ids)
        if not len(ids):
            return ids
        inside = (ids >= 0) & (ids < len(self.pitch))
        safe = np.where(inside, ids, 0)
        note = inside & self.in_note[safe]
        is_program = inside & (self.program[safe] > -2)
        is_pitch = inside & (self.pitch[safe] >= 0)
        after_program = np.r_[False, is_program[:-1]]
        starts = ~note | is_program | (is_pitch & ~after_program)
        starts[0] = True  # ids that open mid-note: the fragment is a unit of its own
        unit = np.cumsum(starts) - 1  # each note, and each other token, is one unit
        segment = np.cumsum(~note)  # notes between two other tokens sort among themselves
        n_units = int(unit[-1]) + 1
        program = np.full(n_units, -1, dtype=np.int64)
        program[unit[is_program]] = self.program[safe[is_program]]
        pitch = np.full(n_units, -1, dtype=np.int64)
        pitch[unit[is_pitch]] = self.pitch[safe[is_pitch]]
        # a unit that is not a note comes first in its segment (it opened it)
        first = np.full(n_units, 0, dtype=np.int64)
        first[unit[~note]] = -1
        tail = np.zeros(n_units, dtype=np.int64)
        if note[-1] and not self.duration[safe[-1]]:  # an unfinished note: it stays last
            tail[unit[-1]] = 1
        seg_of_unit = np.zeros(n_units, dtype=np.int64)
        seg_of_unit[unit] = segment
        order = np.lexsort((np.arange(n_units), pitch, program, first, tail, seg_of_unit))
        rank = np.empty(n_units, dtype=np.int64)
        rank[order] = np.arange(n_units)
        return ids[np.argsort(rank[unit], kind="stable")]

    def nearest_steps(self, ids: np.ndarray) -> np.ndarray:
        """Counts [128] of the semitones from each pitched note to the nearest pitch before
        it at its position and program, in `ids` in the order a model trains on (drums left
        out; a chord's first note counts nothing). Sorted bottom-up, the nearest is the note
        just below, so this is the chord's steps upwards."""
        ids = np.asarray(ids)
        inside = (ids >= 0) & (ids < len(self.pitch))
        safe = np.where(inside, ids, 0)
        segment = np.cumsum(~(inside & self.in_note[safe]))
        is_program = inside & (self.program[safe] > -2)
        last = np.maximum.accumulate(np.where(is_program, np.arange(len(ids)), -1))
        program = np.where(last >= 0, self.program[safe[np.maximum(last, 0)]], -1)
        keep = inside & (self.pitch[safe] >= 0) & ~self.drum[safe]
        # the notes of one position and program side by side, in token order within them
        by = np.lexsort((program[keep], segment[keep]))
        pitch, seg, prog = self.pitch[safe[keep]][by], segment[keep][by], program[keep][by]
        nearest = np.full(len(pitch), 128)
        for lag in range(1, len(pitch)):  # the k-th note before, while one is in the chord
            same = (seg[lag:] == seg[:-lag]) & (prog[lag:] == prog[:-lag])
            if not same.any():
                break
            step = np.where(same, np.abs(pitch[lag:] - pitch[:-lag]), 128)
            np.minimum(nearest[lag:], step, out=nearest[lag:])
        return np.bincount(nearest[nearest < 128], minlength=128)


def as_trained_ids(ids, keys: KeyShift | None, order: PitchOrder | None) -> np.ndarray:
    """One piece as a model with these `primer_keys` and `trained_order` saw its training
    pieces: key-normalised, then chords bottom-up (primers, validation pieces, chord counts)."""
    ids = np.asarray(ids)
    ids = keys.normalise(ids) if keys is not None else ids
    return order.sort(ids) if order is not None else ids


def in_order(pieces: Iterable[np.ndarray], order: PitchOrder | None) -> Iterable[np.ndarray]:
    """`pieces` in the note order of a model with this `trained_order`."""
    return pieces if order is None else Mapped(pieces, order.sort)


def trained_order(model_dir: str | Path, vocab: dict[str, int]) -> PitchOrder | None:
    """A `PitchOrder` when the model of `model_dir` was trained with chords bottom-up (its
    `training.json`; sampling then keeps them so, and primers are sorted alike), else None."""
    path = Path(model_dir) / TRAINING_FILE
    order = json.loads(path.read_text()).get("note_order") if path.exists() else None
    return PitchOrder(vocab) if order == "pitch" else None


def chord_intervals(
    pieces: Iterable[tuple[np.ndarray, int]], order: PitchOrder, n_ids: int
) -> list[list[int]]:
    """`PitchOrder.nearest_steps` of (ids, composer id) pieces as a model trains on them
    (`as_trained_ids`), summed per composer id (row 0: all pieces), streamed: what stage 08
    stores beside the model (`INTERVALS_FILE`) for `generate.chord_prior`."""
    total = np.zeros((n_ids, 128), dtype=np.int64)
    for ids, composer in pieces:
        counts = order.nearest_steps(ids)
        total[0] += counts
        if 0 < composer < n_ids:
            total[composer] += counts
    return total.tolist()


PRIOR_WEIGHT = 128.0  # pseudo-counts of the pooled intervals in each composer's estimate


def interval_log_probs(counts: np.ndarray) -> list[list[float]]:
    """log P(step) per composer id and semitone 0..127 from `chord_intervals` counts:
    row 0 add-one smoothed, the other rows shrunk towards it by `PRIOR_WEIGHT` pseudo-counts
    (a composer with few chords gets about the pooled intervals)."""
    counts = np.asarray(counts, dtype=np.float64)
    pooled = (counts[0] + 1.0) / (counts[0] + 1.0).sum()
    probs = (counts + PRIOR_WEIGHT * pooled) / (counts.sum(1, keepdims=True) + PRIOR_WEIGHT)
    probs[0] = pooled
    return np.log(probs).round(4).tolist()
