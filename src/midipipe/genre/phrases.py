"""Phrases and chunks cut from REMI token rows: the units the two genre models read.

A *phrase* (phrase classifier) is `bars_per_phrase` consecutive bars prefixed with [CLS], cut
to `max_len` tokens; every cut is counted, so the truncation rate can be reported. [CLS] is the
tokenizer's BOS token, which a REMI stream of a score never contains, so the vocabulary (and
the checkpoint/tokenizer check) stays the tokenizer's own. A *chunk* (hierarchical model) is
`bars_per_chunk` consecutive bars once the empty bars (no notes) are dropped.

Pitch transposition for augmentation moves `Pitch_*` tokens only (drums are `PitchDrum_*`),
by a shift the phrase's highest and lowest pitch allow, so no note leaves the tokenizer's range.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TOKENIZER_FILE = "tokenizer.json"  # in a model folder: the tokenizer its ids mean


@dataclass
class Vocab:
    """The token facts phrase building needs, as lookup tables over ids."""

    size: int
    pad_id: int
    cls_id: int
    pitch_of: np.ndarray  # id -> MIDI pitch of a Pitch_* token, else -1
    id_of_pitch: np.ndarray  # MIDI pitch -> id of its Pitch_* token, else -1
    is_note: np.ndarray  # id -> a Pitch_* or PitchDrum_* token
    is_drum: np.ndarray  # id -> a PitchDrum_* token
    pitch_lo: int
    pitch_hi: int  # inclusive
    sha: str  # fingerprint of the whole vocabulary: a checkpoint stores it

    @classmethod
    def of(cls, tokenizer) -> Vocab:
        vocab = tokenizer.vocab
        n = len(vocab)
        pitch_of = np.full(n, -1, dtype=np.int64)
        id_of_pitch = np.full(128, -1, dtype=np.int64)
        is_note = np.zeros(n, dtype=bool)
        is_drum = np.zeros(n, dtype=bool)
        for token, i in vocab.items():
            kind, _, value = token.partition("_")
            if kind == "Pitch":
                pitch_of[i] = int(value)
                id_of_pitch[int(value)] = i
                is_note[i] = True
            elif kind == "PitchDrum":
                is_note[i] = is_drum[i] = True
        pitches = pitch_of[pitch_of >= 0]
        return cls(
            size=n,
            pad_id=tokenizer.pad_token_id,
            cls_id=vocab["BOS_None"],
            pitch_of=pitch_of,
            id_of_pitch=id_of_pitch,
            is_note=is_note,
            is_drum=is_drum,
            pitch_lo=int(pitches.min()),
            pitch_hi=int(pitches.max()),
            sha=vocab_sha(tokenizer),
        )


def vocab_sha(tokenizer) -> str:
    """sha1 of the token -> id map: equal only for tokenizers that mean the same by each id."""
    data = json.dumps(sorted(tokenizer.vocab.items()), separators=(",", ":")).encode()
    return hashlib.sha1(data).hexdigest()


def check_vocab(saved_sha: str, saved_size: int, vocab: Vocab, what: str) -> None:
    """A checkpoint trained on another vocabulary reads ids as other tokens: refuse it."""
    if saved_sha != vocab.sha or saved_size != vocab.size:
        raise ValueError(
            f"{what} was trained on another vocabulary ({saved_size} tokens, fingerprint "
            f"{saved_sha[:10]}) than this tokenizer ({vocab.size} tokens, {vocab.sha[:10]}): "
            "retrain it, or use the tokenizer it was trained with"
        )


def bar_spans(n_ids: int, bar_starts: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of every bar; tokens before the first bar line belong to no bar."""
    starts = [int(b) for b in bar_starts if 0 <= b < n_ids]
    return list(zip(starts, [*starts[1:], n_ids], strict=True))


def spread(n: int, k: int) -> list[int]:
    """k indices out of range(n), evenly spread (all of them when k <= 0 or k >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


@dataclass
class Cut:
    """Sequences cut from one piece, and what the cutting did."""

    seqs: list[np.ndarray]
    n_bars: int  # bars the piece has (non-empty bars, for chunks)
    truncated: int  # sequences cut at the length limit


def phrases(
    ids: Sequence[int],
    bar_starts: Sequence[int],
    vocab: Vocab,
    bars_per_phrase: int,
    max_len: int,
    max_phrases: int = 0,
) -> Cut:
    """[CLS] + `bars_per_phrase` bars, non-overlapping; a trailing partial phrase and phrases
    without notes are left out. `max_phrases` > 0 keeps that many, spread over the piece."""
    ids = np.asarray(ids, dtype=np.int64)
    spans = bar_spans(len(ids), bar_starts)
    groups = [
        spans[i : i + bars_per_phrase]
        for i in range(0, len(spans) - bars_per_phrase + 1, bars_per_phrase)
    ]
    bodies = [ids[g[0][0] : g[-1][1]] for g in groups]
    bodies = [b for b in bodies if vocab.is_note[b].any()]
    bodies = [bodies[i] for i in spread(len(bodies), max_phrases)]
    seqs = [np.concatenate([[vocab.cls_id], b[: max_len - 1]]) for b in bodies]
    return Cut(seqs, len(spans), sum(len(b) + 1 > max_len for b in bodies))


def chunks(
    ids: Sequence[int],
    bar_starts: Sequence[int],
    vocab: Vocab,
    bars_per_chunk: int,
    max_len: int,
    max_chunks: int = 0,
) -> Cut:
    """Non-empty bars in runs of `bars_per_chunk` (the last run may be shorter), each cut to
    `max_len` tokens; `max_chunks` > 0 keeps that many, spread over the piece."""
    ids = np.asarray(ids, dtype=np.int64)
    bars = [ids[a:b] for a, b in bar_spans(len(ids), bar_starts)]
    bars = [b for b in bars if vocab.is_note[b].any()]
    bodies = [
        np.concatenate(bars[i : i + bars_per_chunk]) for i in range(0, len(bars), bars_per_chunk)
    ]
    bodies = [bodies[i] for i in spread(len(bodies), max_chunks)]
    return Cut([b[:max_len] for b in bodies], len(bars), sum(len(b) > max_len for b in bodies))


# -- augmentation ----------------------------------------------------------------------------


def shift_range(seq: np.ndarray, vocab: Vocab, max_shift: int) -> tuple[int, int]:
    """The semitone shifts in [-max_shift, max_shift] that keep every pitch of `seq` in range."""
    pitches = vocab.pitch_of[seq]
    pitches = pitches[pitches >= 0]
    if not len(pitches):
        return 0, 0
    return (
        max(-max_shift, vocab.pitch_lo - int(pitches.min())),
        min(max_shift, vocab.pitch_hi - int(pitches.max())),
    )


def transpose(seq: np.ndarray, shift: int, vocab: Vocab) -> np.ndarray:
    """`seq` with every Pitch_* token moved by `shift` semitones (which must stay in range)."""
    if shift == 0:
        return seq
    pitches = vocab.pitch_of[seq]
    moved = pitches >= 0
    out = seq.copy()
    out[moved] = vocab.id_of_pitch[pitches[moved] + shift]
    if (out[moved] < 0).any():
        raise ValueError(f"transposing by {shift} leaves the tokenizer's pitch range")
    return out


def random_transpose(
    seq: np.ndarray, vocab: Vocab, max_shift: int, rng: torch.Generator
) -> np.ndarray:
    """A uniformly drawn allowed shift (from the training loop's generator, so resumable)."""
    lo, hi = shift_range(seq, vocab, max_shift)
    if lo >= hi:
        return seq
    return transpose(seq, int(torch.randint(lo, hi + 1, (1,), generator=rng)), vocab)


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int) -> torch.Tensor:
    """[B, longest] int64, right-padded."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
    return out
