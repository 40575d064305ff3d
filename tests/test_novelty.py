"""Longest n-gram shared with the training pieces: hand-made answers, and a brute force."""

from __future__ import annotations

import random

import numpy as np
import pytest

from midipipe.evaluation.novelty import Hasher, longest_shared, novelty


def brute(piece, corpus) -> int:
    """Longest common substring of `piece` with any corpus piece, by dynamic programming."""
    best = 0
    for other in corpus:
        prev = [0] * (len(other) + 1)
        for a in piece:
            cur = [0] * (len(other) + 1)
            for j, b in enumerate(other, 1):
                if a == b:
                    cur[j] = prev[j - 1] + 1
                    best = max(best, cur[j])
            prev = cur
    return best


def test_hand_made_answers():
    train = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [0, 0, 0]]
    pieces = [
        [9, 2, 3, 4, 9],  # 2 3 4
        [1, 2, 3, 4, 5, 6],  # a copy: all 6
        [6, 7, 8],  # 6 ends one piece, 7 starts the next: only 7 8 counts
        [10, 11],  # nothing shared
        [],  # empty
        [0, 0, 0, 0, 0],  # three zeros (token 0 is a token)
        [5],
    ]
    assert longest_shared(pieces, train) == [3, 6, 2, 0, 0, 3, 1]


def test_ngrams_across_pieces_and_chunks_do_not_count():
    train = [[1, 2], [3, 4], [5, 6]]
    for chunk in (1, 2, 3, 100):  # chunk boundaries fall anywhere
        assert longest_shared([[2, 3], [1, 2], [4, 5, 6]], train, chunk=chunk) == [1, 2, 2]


def test_the_same_ngram_hashes_alike_wherever_it_is():
    h = Hasher(np.array([5, 1, 2, 3, 9, 1, 2, 3]))
    grams = h.ngrams(3).tolist()
    assert grams[1] == grams[5] and len(set(grams)) == 5
    assert len(h.ngrams(9)) == 0


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_on_random_token_lists(seed):
    rng = random.Random(seed)
    train = [[rng.randrange(4) for _ in range(rng.randrange(1, 40))] for _ in range(12)]
    pieces = [[rng.randrange(4) for _ in range(rng.randrange(0, 30))] for _ in range(15)]
    pieces.append(train[3][5:20])  # a copy of a slice
    assert longest_shared(pieces, train, chunk=50) == [brute(p, train) for p in pieces]


def test_summary_of_generated_against_real():
    train = [list(range(100))]
    copied, fresh = list(range(10, 40)), [200 + i for i in range(30)]
    real = [[5, 6, 7, 500, 501], [60, 61, 502]]
    m = novelty([copied, fresh], real, train)
    assert m["novelty_pieces"] == 2 and m["novelty_lcs_max"] == 30.0
    assert m["novelty_lcs_median"] == 15.0  # (30 + 0) / 2
    assert m["novelty_real_lcs_max"] == 3.0 and m["novelty_real_lcs_median"] == 2.5
    assert m["novelty_above_real_max"] == 1
    assert novelty([], [], train) == {
        "novelty_pieces": 0,
        "novelty_real_pieces": 0,
        "novelty_tokens_mean": 0.0,
        "novelty_real_tokens_mean": 0.0,
    }
