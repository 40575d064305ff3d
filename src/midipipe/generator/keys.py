"""Key normalisation of REMI pieces (`generator.key: normalise`).

A small model in a CPU budget that sees every piece in its own key has to learn twelve
transpositions of each scale; the issue-15 GPT learned REMI's grammar and rhythm that way
but not tonality (pitch-class entropy ~3.4 bits for every composer against 2.4-3.1 real).
Transposed so that each piece's Krumhansl-Kessler key (`music_metrics.key_correlations`,
the one the hand-crafted features use) is C major or A minor, the training data holds one
major and one minor scale. Only `Pitch_*` tokens move (drums are `PitchDrum_*`); the shift
is the smallest one (-5..+6 semitones) and a note it would push out of the tokenizer's
pitch range moves an octave back in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from midipipe.evaluation.music_metrics import key_correlations
from midipipe.generator import TRAINING_FILE

KEY_MODES = ("none", "normalise")
_MINOR_TONIC = 9  # A: the relative minor of C, so both modes share C major's pitch classes


class KeyShift:
    """Estimates a REMI piece's key from its Pitch tokens and transposes them."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.pitch = np.full(max(vocab.values()) + 1, -1, dtype=np.int64)  # token id -> MIDI
        for token, i in vocab.items():
            if token.startswith("Pitch_"):
                self.pitch[i] = int(token.removeprefix("Pitch_"))
        pitched = self.pitch >= 0
        if not pitched.any():
            raise ValueError("the vocabulary has no Pitch_* tokens to transpose")
        self.lo, self.hi = int(self.pitch[pitched].min()), int(self.pitch[pitched].max())
        self.id_of = np.full(128, -1, dtype=np.int64)  # MIDI pitch -> token id
        self.id_of[self.pitch[pitched]] = np.flatnonzero(pitched)

    def shift_of(self, ids: np.ndarray) -> int:
        """Semitones (-5..+6) that take the piece's estimated key to C major / A minor (0
        for a piece without pitched notes)."""
        ids = np.asarray(ids)
        pitches = self.pitch[ids[(ids >= 0) & (ids < len(self.pitch))]]
        pitches = pitches[pitches >= 0]
        if not len(pitches):
            return 0
        hist = np.bincount(pitches % 12, minlength=12).astype(np.float64)
        best = int(key_correlations(hist[None])[0].argmax())
        target = 0 if best < 12 else _MINOR_TONIC
        shift = (target - best % 12) % 12
        return shift - 12 if shift > 6 else shift

    def transpose(self, ids: np.ndarray, shift: int) -> np.ndarray:
        """`ids` with every Pitch token moved `shift` semitones (octave-folded into range)."""
        ids = np.asarray(ids)
        if not shift:
            return ids
        inside = (ids >= 0) & (ids < len(self.pitch))
        pitch = np.where(inside, self.pitch[np.where(inside, ids, 0)], -1)
        moved = pitch >= 0
        new = pitch[moved] + shift
        new = np.where(new > self.hi, new - 12, new)
        new = np.where(new < self.lo, new + 12, new)
        out = ids.copy()
        out[moved] = self.id_of[new]
        return out

    def normalise(self, ids: np.ndarray) -> np.ndarray:
        """The piece in C major / A minor."""
        return self.transpose(ids, self.shift_of(ids))


class Mapped:
    """Pieces (re-iterable) changed by `change` as they are read: what the output of a
    model trained on changed pieces (key-normalised, chords bottom-up) is compared with for
    copies (novelty), so a training piece it reproduced in C major still counts."""

    def __init__(
        self, pieces: Iterable[np.ndarray], change: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        self.pieces, self.change = pieces, change

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.change(p) for p in self.pieces)


def as_trained(pieces: Iterable[np.ndarray], keys: KeyShift | None) -> Iterable[np.ndarray]:
    """`pieces` as a model with these `primer_keys` saw its training data."""
    return pieces if keys is None else Mapped(pieces, keys.normalise)


def primer_keys(model_dir: str | Path, vocab: dict[str, int]) -> KeyShift | None:
    """What primers go through before a model of `model_dir` continues them: a `KeyShift`
    when it was trained key-normalised (its `training.json`), else None (a folder from
    before that file: not normalised)."""
    path = Path(model_dir) / TRAINING_FILE
    key = json.loads(path.read_text()).get("key", "none") if path.exists() else "none"
    return KeyShift(vocab) if key == "normalise" else None
