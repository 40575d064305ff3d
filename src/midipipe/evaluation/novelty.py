"""Are generated pieces copies of training pieces? For each piece, the longest run of REMI
tokens it shares with any training piece (its longest common n-gram), as a distribution,
beside the same figure for real held-out excerpts of the same length. A generator that copies
sits far above the held-out excerpts; one that only shares the idiom (a bar line, a position,
a common chord) sits with them.

The search scales with the training corpus and keeps only the pieces' hashes in memory: a
binary search on n for every piece at once. Each round asks, for each piece still open,
whether any of its n-grams (n the middle of its open range) occurs in training; one pass over
the training tokens, in chunks, hashes their n-grams for the lengths asked and looks them up
among the pieces' hashes. About log2(longest piece) passes in all. An n-gram's hash is a
polynomial in a random odd base modulo 2**64, so a false match needs a 64-bit collision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
INVERSE = pow(BASE, -1, 2**64)
CHUNK = 1 << 20  # training tokens hashed per numpy call


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**64."""
    out = np.full(n, base, dtype=np.uint64)
    out[:1] = 1
    return np.cumprod(out, dtype=np.uint64)


class Hasher:
    """Hashes of every n-gram of a token array: prefix sums of x[j] * BASE**j, so the n-gram
    at i is (P[i + n] - P[i]) * BASE**-i, the same wherever it occurs."""

    def __init__(self, tokens: np.ndarray) -> None:
        x = tokens.astype(np.uint64) + np.uint64(1)  # token 0 still counts
        self.length = len(x)
        self.prefix = np.zeros(len(x) + 1, dtype=np.uint64)
        np.cumsum(x * _powers(BASE, len(x)), dtype=np.uint64, out=self.prefix[1:])
        self.unshift = _powers(INVERSE, len(x))

    def ngrams(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each i in 0 .. length - n."""
        m = self.length - n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64)
        return (self.prefix[n : n + m] - self.prefix[:m]) * self.unshift[:m]


def chunks(
    corpus: Iterable[Sequence[int]], size: int = CHUNK
) -> Iterator[tuple[Hasher, np.ndarray]]:
    """Training pieces joined into arrays of about `size` tokens: (hasher, the end offset of
    the piece each token belongs to), so n-grams across two pieces can be left out."""
    parts: list[np.ndarray] = []
    total = 0
    for piece in corpus:
        parts.append(np.asarray(piece, dtype=np.int64))
        total += len(parts[-1])
        if total >= size:
            yield _joined(parts)
            parts, total = [], 0
    if total:
        yield _joined(parts)


def _joined(parts: list[np.ndarray]) -> tuple[Hasher, np.ndarray]:
    lengths = np.array([len(p) for p in parts])
    ends = np.repeat(np.cumsum(lengths), lengths)
    return Hasher(np.concatenate(parts)), ends


class Query:
    """The n-gram hashes of some pieces for one n: sorted and unique, each one's piece, and
    which have been seen in training. A bitmap over the hashes' top bits, about 16 slots per
    hash, lets a training n-gram be dismissed with one lookup; only the few that pass are
    searched for."""

    def __init__(self, hashers: Sequence[Hasher], pieces: np.ndarray, n: int) -> None:
        hashes = [h.ngrams(n) for h in hashers]
        self.owners = np.repeat(pieces, [len(h) for h in hashes])
        self.unique, self.where = np.unique(np.concatenate(hashes), return_inverse=True)
        self.found = np.zeros(len(self.unique), dtype=bool)
        bits = max(10, int(np.ceil(np.log2(16 * max(1, len(self.unique))))))
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << bits, dtype=bool)
        self.bitmap[(self.unique >> self.shift).astype(np.intp)] = True

    def look_up(self, h: np.ndarray, ends: np.ndarray, n: int) -> None:
        """Mark the hashes among training n-gram hashes `h` (n-gram i starts at offset i of
        a chunk whose pieces end at `ends`; those across two pieces do not count)."""
        if not len(self.unique):
            return
        at = np.flatnonzero(self.bitmap[(h >> self.shift).astype(np.intp)])
        at = at[at + n <= ends[at]]
        if not at.size:
            return
        h = h[at]
        i = np.minimum(np.searchsorted(self.unique, h), len(self.unique) - 1)
        self.found[i[self.unique[i] == h]] = True


def longest_shared(
    pieces: Sequence[Sequence[int]], corpus: Iterable[Sequence[int]], chunk: int = CHUNK
) -> list[int]:
    """For each piece, the length of the longest n-gram it shares with any piece of `corpus`
    (0 when no token is shared). `corpus` is iterated once per round, so a list, or any
    re-iterable that streams from disk."""
    lo = np.zeros(len(pieces), dtype=np.int64)  # a shared n-gram this long is known
    hi = np.array([len(p) for p in pieces], dtype=np.int64)  # none longer can exist
    hashers = [Hasher(np.asarray(p, dtype=np.int64)) for p in pieces]
    rounds = 0
    passes = tqdm(total=int(hi.max(initial=0)).bit_length(), desc="novelty", unit="pass")
    while (open_ := np.flatnonzero(lo < hi)).size:
        mid = (lo + hi + 1) // 2
        queries = {}
        for n in np.unique(mid[open_]).tolist():
            asked = open_[mid[open_] == n]
            queries[n] = Query([hashers[i] for i in asked], asked, n)
        for hasher, ends in chunks(corpus, chunk):
            for n, query in queries.items():
                query.look_up(hasher.ngrams(n), ends, n)
        shared = np.zeros(len(pieces), dtype=bool)
        for query in queries.values():
            shared[query.owners[query.found[query.where]]] = True
        searching = lo < hi
        lo = np.where(searching & shared, mid, lo)
        hi = np.where(searching & ~shared, mid - 1, hi)
        rounds += 1
        passes.update()
    passes.close()
    log.info("longest shared n-grams of %d pieces in %d passes", len(pieces), rounds)
    return lo.tolist()


def summary(lengths: Sequence[int], prefix: str) -> dict[str, float]:
    """Median, 90th percentile and maximum of the longest shared n-gram, as flat metrics."""
    if not lengths:
        return {f"{prefix}_pieces": 0}
    x = np.asarray(lengths, dtype=float)
    return {
        f"{prefix}_pieces": len(x),
        f"{prefix}_lcs_median": float(np.median(x)),
        f"{prefix}_lcs_p90": float(np.percentile(x, 90)),
        f"{prefix}_lcs_max": float(x.max()),
    }


def novelty(
    generated: Sequence[Sequence[int]],
    real: Sequence[Sequence[int]],
    train: Iterable[Sequence[int]],
) -> dict[str, float]:
    """`novelty_*` for the generated pieces and `novelty_real_*` for real held-out excerpts
    (about as long), each against the training pieces; `novelty_above_real_max` counts the
    generated pieces that share a longer run with training than any held-out excerpt does."""
    lengths = longest_shared([*generated, *real], train)
    gen, ref = lengths[: len(generated)], lengths[len(generated) :]
    out = {
        **summary(gen, "novelty"),
        **summary(ref, "novelty_real"),
        "novelty_tokens_mean": float(np.mean([len(p) for p in generated])) if generated else 0.0,
        "novelty_real_tokens_mean": float(np.mean([len(p) for p in real])) if real else 0.0,
    }
    if gen and ref:
        out["novelty_above_real_max"] = int(sum(g > max(ref) for g in gen))
    return out
