"""Rare meters onto the ones a vocabulary has, so that a piece with a few bars in 13/16 is kept.

A token vocabulary holds a fixed set of time signatures; real music (ASAP's Chopin, Liszt,
Ravel) has bars in 10/4, 13/16 or 14/16. Rejecting the whole piece loses good music, so each
unsupported meter is replaced by a supported one, first rule that applies:
1. `same`: the same bar length (14/16 -> 7/8, 10/4 -> 5/2): bar lines do not move;
2. `split`: 2-16 equal supported bars per bar (15/8 -> three 5/8; 20/8 -> two 5/4): the real
   bar lines stay, with extra ones between them;
3. `merge`: one supported bar per 2-16 bars (POP909's 1/4 -> 2/4): every k-th bar line stays;
4. `nearest`: the supported meter nearest in bar length (13/16 -> 6/8): bar lines drift until
   the next time signature, as in miditok when it drops an unknown meter.
Ties go to the denominator nearest the original's, then to the shorter bar.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from fractions import Fraction

import symusic

Meter = tuple[int, int]
MAX_SPLIT = 16  # a cadenza bar in 65/4 is thirteen 5/4 bars


def _length(meter: Meter) -> Fraction:
    return Fraction(meter[0], meter[1]) if meter[1] > 0 else Fraction(1)  # in whole notes


def map_meter(meter: Meter, supported: Collection[Meter]) -> tuple[Meter, str]:
    """The supported meter that stands for `meter`, and the rule that chose it."""
    if meter in supported:
        return meter, "same"
    if not supported:
        raise ValueError("no supported time signature to map onto")
    length = _length(meter)

    def closeness(m: Meter) -> tuple:
        return abs(m[1] - meter[1]), _length(m), m

    ratios = [(Fraction(1), "same")]
    ratios += [(Fraction(1, k), "split") for k in range(2, MAX_SPLIT + 1)]
    ratios += [(Fraction(k), "merge") for k in range(2, MAX_SPLIT + 1)]
    for ratio, rule in ratios:
        fits = [m for m in supported if _length(m) == length * ratio]
        if fits:
            return min(fits, key=closeness), rule
    best = min(supported, key=lambda m: (abs(_length(m) - length), *closeness(m)))
    return best, "nearest"


def map_score_meters(
    score: symusic.Score, supported: Collection[Meter]
) -> tuple[symusic.Score, Counter[str]]:
    """`score` with every unsupported time signature mapped (a shallow copy when any is), and
    the bars that were in each unsupported meter, keyed "13/16"."""
    signatures = list(score.time_signatures)
    rare = [i for i, ts in enumerate(signatures) if (ts.numerator, ts.denominator) not in supported]
    bars: Counter[str] = Counter()
    if not rare:
        return score, bars
    supported = set(supported)
    end = max(score.end(), signatures[-1].time)
    mapped = []
    for i, ts in enumerate(signatures):
        meter = (ts.numerator, ts.denominator)
        if i in rare:
            span = (signatures[i + 1].time if i + 1 < len(signatures) else end) - ts.time
            bar_ticks = score.ticks_per_quarter * 4 * _length(meter)
            bars[f"{meter[0]}/{meter[1]}"] += max(
                1, math.ceil(span / bar_ticks) if bar_ticks else 1
            )
            meter, _ = map_meter(meter, supported)
        mapped.append(symusic.TimeSignature(ts.time, *meter))
    score = score.copy(deep=False)
    score.time_signatures = mapped
    return score, bars
