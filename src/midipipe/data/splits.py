"""Deterministic train/valid/test splits that never move a song once it has one.

A song's split is drawn from a keyed hash of its `song_id` alone, so:
- every clip of a song gets the same split (grouping);
- adding files never moves an existing song (stability), unlike re-shuffled quotas;
- each label's songs are split in the configured proportions in expectation
  (stratification by independence: the draw cannot depend on the label).
Official splits shipped with a corpus (EMOPIA, MAESTRO) take precedence.
"""

from __future__ import annotations

import hashlib

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
