"""Generated music against real music: how far each metric's distribution is from the real
one, overall and per composer.

Real pieces are cut into excerpts of whole bars no longer than the generated pieces (in
tokens), and both sides go through the same REMI decoding, so a metric that grows with
length (pitch range) or depends on quantisation compares like with like.

Distances, per metric, between per-piece values: `oa`, the overlapping area of the two
Gaussian kernel density estimates (1 = the same distribution, 0 = disjoint; Yang & Lerch,
2020), and `w1`, the Wasserstein-1 distance in the metric's own units.

Per composer too (`g<value>_<composer>_<metric>_oa`): the takes of each composer against
that composer's real excerpts, so "closer to the real thing" is asked of the music it was
meant to resemble. `versus_chance` gives the conditioning figures of `judge` a p-value (the
one-sided binomial chance of doing that well by guessing) and a Wilson 95% interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import symusic
from scipy.stats import binomtest, wasserstein_distance

from midipipe.core.io import atomic_path
from midipipe.data.sources.names import slug
from midipipe.evaluation import music_metrics as mm

log = logging.getLogger(__name__)

DISTANCES = "oa: overlapping area of Gaussian KDEs (1 = same); w1: Wasserstein-1, metric units"


@dataclass
class Piece:
    """Token ids to score, the composer id they belong to (or were generated for), and
    extra fields for grouping (the guidance value of a generated piece)."""

    ids: list[int]
    composer_id: int
    guidance: float | None = None
    stats: dict | None = None


def excerpts(
    ids: Sequence[int], bar_starts: Sequence[int], max_tokens: int, max_count: int
) -> list[list[int]]:
    """Runs of whole consecutive bars, each at most `max_tokens` tokens (a longer bar is cut),
    at most `max_count` of them spread evenly over the piece."""
    bounds = [b for b in bar_starts if 0 < b < len(ids)] + [len(ids)]
    runs, start, last = [], 0, 0
    for end in bounds:
        if end - start > max_tokens and last > start:
            runs.append((start, last))
            start = last
        last = end
    runs.append((start, last))
    runs = [(a, min(b, a + max_tokens)) for a, b in runs if b > a]
    if len(runs) > max_count:
        runs = [runs[i] for i in np.linspace(0, len(runs) - 1, max_count).round().astype(int)]
    return [np.asarray(ids[a:b]).tolist() for a, b in runs]


def decode(tokenizer, ids: Sequence[int]) -> symusic.Score:
    return tokenizer.decode(list(ids)) if ids else symusic.Score(tokenizer.time_division)


def describe(tokenizer, pieces: Sequence[Piece]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per piece: the six metrics, the music features and the instrument-family shares."""
    rows, feats, inst = [], [], []
    for p in pieces:
        score = decode(tokenizer, p.ids)
        rows.append(mm.piece_metrics(score))
        feats.append(mm.features(score))
        inst.append(mm.instruments(score))
    if not rows:
        return [], np.zeros((0, len(mm.FEATURES))), np.zeros((0, len(mm.INSTRUMENTS)))
    return rows, np.stack(feats), np.stack(inst)


# -- distances -------------------------------------------------------------------------------


def _kde(x: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z**2).sum(1) / (len(x) * bw * math.sqrt(2 * math.pi))


def _bandwidth(x: np.ndarray, floor: float) -> float:
    """Silverman's rule, floored so a constant metric (all 1.0) still has a density."""
    return max(1.06 * float(np.std(x)) * len(x) ** -0.2, floor)


def overlap_area(a: Sequence[float], b: Sequence[float], points: int = 1024) -> float:
    """Area under the smaller of the two KDEs (NaN values dropped; NaN if a side is empty)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return math.nan
    both = np.concatenate([a, b])
    floor = max(1e-3, 0.01 * float(both.max() - both.min()))
    bw_a, bw_b = _bandwidth(a, floor), _bandwidth(b, floor)
    pad = 4 * max(bw_a, bw_b)
    grid = np.linspace(both.min() - pad, both.max() + pad, points)
    overlap = np.minimum(_kde(a, grid, bw_a), _kde(b, grid, bw_b))
    return float(min(1.0, np.trapezoid(overlap, grid)))


def w1(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else math.nan


def compare(real: list[dict], gen: list[dict], prefix: str) -> dict[str, float]:
    """`<prefix>_<metric>_{mean,oa,w1}` of generated against real per-piece metrics."""
    out: dict[str, float] = {}
    for m in mm.METRICS:
        r, g = [row[m] for row in real], [row[m] for row in gen]
        out[f"{prefix}_{m}_mean"] = float(np.nanmean(g)) if np.isfinite(g).any() else math.nan
        out[f"{prefix}_{m}_oa"] = overlap_area(r, g)
        out[f"{prefix}_{m}_w1"] = w1(r, g)
    oas = [out[f"{prefix}_{m}_oa"] for m in mm.METRICS]
    out[f"{prefix}_oa_mean"] = float(np.nanmean(oas)) if np.isfinite(oas).any() else math.nan
    return out


# -- against chance -------------------------------------------------------------------------


def versus_chance(hits: int, n: int, chance: float) -> dict[str, float]:
    """One-sided binomial test of `hits` right out of `n` against guessing (`p`: the chance
    of doing this well by luck), and the Wilson 95% interval of the accuracy."""
    if n == 0:
        return {"p": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    p = binomtest(hits, n, chance, alternative="greater").pvalue
    ci = binomtest(hits, n).proportion_ci(0.95, method="wilson")  # two-sided
    return {"p": float(p), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def plot_message(path, text: str) -> None:
    """A PNG that states why a plot has nothing to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# -- the whole evaluation --------------------------------------------------------------------


def guidance_tag(g: float) -> str:
    return f"g{float(g)!r}"


def compare_by_composer(
    real_rows: list[dict],
    real_ids: Sequence[int],
    gen_rows: list[dict],
    gen_ids: Sequence[int],
    composers: Sequence[tuple[str, int]],
    prefix: str,
) -> dict[str, float]:
    """`compare` per composer: `<prefix>_<composer>_<metric>_{mean,oa,w1}` (and `_oa_mean`)
    of its generated pieces against its real ones, and `real_<composer>_<metric>_mean`; a
    composer lacking either side is left out."""
    out: dict[str, float] = {}
    real_ids, gen_ids = np.asarray(real_ids), np.asarray(gen_ids)
    for name, cid in composers:
        real = [r for r, c in zip(real_rows, real_ids, strict=True) if c == cid]
        gen = [r for r, c in zip(gen_rows, gen_ids, strict=True) if c == cid]
        if not real or not gen:
            continue
        out.update(compare(real, gen, f"{prefix}_{slug(name)}"))
        for m in mm.METRICS:
            vals = [r[m] for r in real]
            mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            out[f"real_{slug(name)}_{m}_mean"] = mean
    return out


def evaluate_generation(
    tokenizer,
    generated: Sequence[Piece],
    real_test: Sequence[Piece],
    composers: Sequence[tuple[str, int]],
) -> dict:
    """Flat metrics for metrics/generation.json: sampling stats and the music-metric
    distances of each guidance value's takes to real held-out excerpts (`real_test`), over
    all evaluated `composers` and per composer (see the module docstring). The composer
    judge is `judge.judge_conditioning`."""
    ids = [cid for _, cid in composers]
    ref = [p for p in real_test if p.composer_id in ids] or list(real_test)
    real_rows, _, _ = describe(tokenizer, ref)
    real_ids = [p.composer_id for p in ref]
    out: dict = {
        "real_test_excerpts": len(ref),
        "generated_pieces": len(generated),
        "distances": DISTANCES,
    }
    for m in mm.METRICS:
        vals = [r[m] for r in real_rows]
        out[f"real_{m}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    for g in sorted({p.guidance for p in generated}):
        group = [p for p in generated if p.guidance == g]
        tag = guidance_tag(g)
        rows, _, _ = describe(tokenizer, group)
        stats = [p.stats or {} for p in group]
        tokens = sum(s.get("tokens", 0) for s in stats)
        out.update(
            {
                f"{tag}_pieces": len(group),
                f"{tag}_empty_pieces": sum(not np.isfinite(r["pitch_range"]) for r in rows),
                f"{tag}_tokens_mean": tokens / max(1, len(group)),
                f"{tag}_bars_mean": float(np.mean([s.get("bars", 0) for s in stats])),
                f"{tag}_repairs_per_piece": sum(s.get("repairs", 0) for s in stats) / len(group),
                f"{tag}_repair_rate": sum(s.get("repairs", 0) for s in stats) / max(1, tokens),
                f"{tag}_masked_mass": float(np.mean([s.get("masked_mass", 0.0) for s in stats])),
                f"{tag}_tokens_per_s": float(np.mean([s.get("tokens_per_s", 0.0) for s in stats])),
                **compare(real_rows, rows, tag),
                **compare_by_composer(
                    real_rows, real_ids, rows, [p.composer_id for p in group], composers, tag
                ),
            }
        )
    return finite(out)


def finite(out: dict) -> dict:
    """JSON has no NaN: an undefined figure is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}
