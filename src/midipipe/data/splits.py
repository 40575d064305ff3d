"""Deterministic train/valid/test splits that never move a song once it has one.

A song's split is drawn from a keyed hash of its `song_id` alone, so:
- every clip of a song gets the same split (grouping);
- adding files never moves an existing song (stability), unlike re-shuffled quotas;
- each label's songs are split in the configured proportions in expectation
  (stratification by independence: the draw cannot depend on the label).
Official splits shipped with a corpus (EMOPIA, MAESTRO) take precedence, song by song: a clip
the official lists leave out follows its song's official split, and a song whose clips the
official lists put in two splits is named in a warning and kept whole.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from `key`, stable across machines and Python versions."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(song_id: str, seed: int, valid_frac: float, test_frac: float) -> str:
    u = unit_hash(song_id, seed)
    if u < test_frac:
        return "test"
    if u < test_frac + valid_frac:
        return "valid"
    return "train"


def check_fractions(valid_frac: float, test_frac: float) -> None:
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError(
            f"organize.valid_frac={valid_frac} and organize.test_frac={test_frac} must be in [0, 1)"
            " and sum to less than 1"
        )


def official_choice(pieces: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """The split of each song from its clips' official `(song_id, split)` (`choose`), and the
    songs whose official splits disagree. Memory: the songs with official splits."""
    official: dict[str, Counter] = defaultdict(Counter)
    for song, split in pieces:
        official[song][split] += 1
    chosen = {song: choose(song, votes) for song, votes in official.items()}
    return chosen, sorted(song for song, votes in official.items() if len(votes) > 1)


def choose(song: str, votes: Mapping[str, int]) -> str:
    """A song's split from its clips' official splits (`votes`: clips per split): where most of
    its clips are; ties go to the held-out side, so that no test clip is trained on. A song in
    several splits is named in a warning."""
    pick = max(votes, key=lambda sp: (votes[sp], SPLITS.index(sp)))
    if len(votes) > 1:
        found = ", ".join(f"{sp} ({n} clips)" for sp, n in sorted(votes.items()))
        log.warning(
            "song %s has clips in several official splits: %s; all its clips go to %s",
            song,
            found,
            pick,
        )
    return pick


def assign_songs(
    pieces: Sequence[tuple[str, str | None]], seed: int, valid_frac: float, test_frac: float
) -> tuple[list[str], list[str]]:
    """The split of each `(song_id, official split or None)`, one split per song (songs with
    official splits: `official_choice`), and the songs whose official splits disagree."""
    chosen, conflicts = official_choice((s, sp) for s, sp in pieces if sp is not None)
    out = [chosen.get(song) or assign(song, seed, valid_frac, test_frac) for song, _ in pieces]
    return out, conflicts
