"""Generated music against real music: how far each metric's distribution is from the real
one, and whether a composer classifier recognises the composer a piece was generated for.

Real pieces are cut into excerpts of whole bars no longer than the generated pieces (in
tokens), and both sides go through the same REMI decoding, so a metric that grows with
length (pitch range) or depends on quantisation compares like with like.

Distances, per metric, between per-piece values: `oa`, the overlapping area of the two
Gaussian kernel density estimates (1 = the same distribution, 0 = disjoint; Yang & Lerch,
2020), and `w1`, the Wasserstein-1 distance in the metric's own units.

Conditioning accuracy: a logistic regression on `music_metrics.features` (metrics plus
pitch-class and duration histograms), trained on real train-split excerpts of the evaluated
composers, labels every generated piece; the share labelled with the composer it was
generated for is compared with chance (1 / number of composers): `_p` is the one-sided
binomial p-value of doing that well by guessing, `_ci_low`/`_ci_high` the Wilson 95%
interval, so "above chance" is a claim with a size attached. The classifier's accuracy on
real held-out excerpts says how much that figure can mean. A second classifier also sees the
instrumentation (`music_metrics.instruments`), which in many corpora tells composers apart
on its own (`*_programs` keys): the first asks "does it sound like X", the second "is it
scored like X".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import symusic
from scipy.stats import binomtest, wasserstein_distance
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from midipipe.core.io import atomic_path
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


# -- composer classifier ---------------------------------------------------------------------


class ComposerClassifier:
    """Standardised features -> multinomial logistic regression (balanced classes)."""

    def __init__(self, seed: int = 0) -> None:
        self.model = make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=5000, C=0.5, class_weight="balanced", random_state=seed),
        )

    def fit(self, x: np.ndarray, y: Sequence[int]) -> ComposerClassifier:
        self.model.fit(x, np.asarray(y))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x) if len(x) else np.zeros(0, dtype=int)


def versus_chance(hits: int, n: int, chance: float) -> dict[str, float]:
    """One-sided binomial test of `hits` right out of `n` against guessing (`p`: the chance
    of doing this well by luck), and the Wilson 95% interval of the accuracy."""
    if n == 0:
        return {"p": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    p = binomtest(hits, n, chance, alternative="greater").pvalue
    ci = binomtest(hits, n).proportion_ci(0.95, method="wilson")  # two-sided
    return {"p": float(p), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def confusion(true: Sequence[int], pred: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    index = {c: i for i, c in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(true, pred, strict=True):
        if t in index and p in index:
            m[index[t], index[p]] += 1
    return m


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


def plot_confusions(
    panels: dict[str, list[tuple[str, np.ndarray]]], names: Sequence[str], path
) -> None:
    """Row-normalised confusion matrices (counts in the cells): one row of panels per
    classifier (key: "" music features, "_programs" with instrumentation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.0 + 0.45 * len(names)
    n_cols = max(len(p) for p in panels.values())
    fig, axes = plt.subplots(
        len(panels), n_cols, figsize=(size * n_cols + 1, (size + 1.0) * len(panels)), squeeze=False
    )
    for row, (suffix, items) in zip(axes, panels.items(), strict=True):
        features = "music + instrument features" if suffix else "music features"
        for ax, (title, m) in zip(row, items, strict=False):
            rows = m.sum(1, keepdims=True)
            ax.imshow(m / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
            for (i, j), v in np.ndenumerate(m):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xlabel("classified as")
            ax.set_title(f"{title}\n({features})", fontsize=8)
        row[0].set_ylabel("composer")
        for ax in row[len(items) :]:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# -- the whole evaluation --------------------------------------------------------------------


def guidance_tag(g: float) -> str:
    return f"g{float(g)!r}"


def evaluate_generation(
    tokenizer,
    generated: Sequence[Piece],
    real_train: Sequence[Piece],
    real_test: Sequence[Piece],
    composers: Sequence[tuple[str, int]],
    confusion_png=None,
    seed: int = 0,
) -> dict:
    """Flat metrics for metrics/generation.json (see the module docstring).

    `real_*` are excerpts of real pieces; `generated` carry their guidance and sampling stats.
    Conditioning accuracy needs at least two `composers`; with fewer, `note` says why not.
    """
    ids = [cid for _, cid in composers]
    ref = [p for p in real_test if p.composer_id in ids] or list(real_test)
    real_rows, real_x, real_inst = describe(tokenizer, ref)
    known = np.array([p.composer_id in ids for p in ref], dtype=bool)
    out: dict = {
        "composers_evaluated": len(ids),
        "real_test_excerpts": len(ref),
        "generated_pieces": len(generated),
        "distances": DISTANCES,
    }
    for m in mm.METRICS:
        vals = [r[m] for r in real_rows]
        out[f"real_{m}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan

    # two classifiers: music features alone (the headline), and with instrumentation too
    views = {"": lambda x, inst: x, "_programs": lambda x, inst: np.hstack([x, inst])}
    classifiers: dict[str, ComposerClassifier] = {}
    panels: dict[str, list] = {}
    train = [p for p in real_train if p.composer_id in ids]
    labels = [p.composer_id for p in train]
    if len(ids) < 2:
        out["note"] = (
            f"only {len(ids)} frequent composer(s) in this corpus "
            "(composers.min_pieces): conditioning accuracy cannot be measured"
        )
    elif len(set(labels)) < 2:
        out["note"] = "the train split holds fewer than 2 of the evaluated composers"
    else:
        _, train_x, train_inst = describe(tokenizer, train)
        test_y = np.array([p.composer_id for p in ref])[known]
        out.update(
            {
                "chance": 1.0 / len(ids),
                "classifier_train_excerpts": len(train),
                "classifier_test_excerpts": int(known.sum()),
            }
        )
        for suffix, view in views.items():
            clf = classifiers[suffix] = ComposerClassifier(seed).fit(
                view(train_x, train_inst), labels
            )
            pred = clf.predict(view(real_x, real_inst)[known])
            out[f"classifier{suffix}_real_test_acc"] = (
                float(np.mean(pred == test_y)) if known.any() else math.nan
            )
            stats = versus_chance(int(np.sum(pred == test_y)), len(test_y), 1.0 / len(ids))
            out.update({f"classifier{suffix}_real_test_acc_{k}": v for k, v in stats.items()})
            panels[suffix] = [("real test excerpts", confusion(test_y, pred, ids))]

    for g in sorted({p.guidance for p in generated}):
        group = [p for p in generated if p.guidance == g]
        tag = guidance_tag(g)
        rows, x, inst = describe(tokenizer, group)
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
            }
        )
        true = [p.composer_id for p in group]
        for suffix, clf in classifiers.items():
            pred = clf.predict(views[suffix](x, inst))
            hits = int(np.sum(pred == np.asarray(true)))
            out[f"{tag}_cond_acc{suffix}"] = hits / len(true)
            stats = versus_chance(hits, len(true), 1.0 / len(ids))
            out.update({f"{tag}_cond_acc{suffix}_{k}": v for k, v in stats.items()})
            panels[suffix].append((f"generated, guidance {g:g}", confusion(true, pred, ids)))
    if confusion_png is not None:
        if classifiers:
            plot_confusions(panels, [name for name, _ in composers], confusion_png)
        else:  # the declared plot still exists, and says why it is empty
            plot_message(confusion_png, "no conditioning accuracy: fewer than 2 frequent composers")
    # JSON has no NaN: an undefined figure is null
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}
