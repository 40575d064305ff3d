"""Does generated music depend on its label? Checks from the users' MIDI-VAE plan beside
the composer judge (`judge`), usable for any generator that yields REMI ids per label.

- Relative cosine similarity, in the music-feature space of `music_metrics.FEATURES` (the
  six MusPy metrics, note density, pitch mean/spread, velocity, pitch-class and duration
  histograms), z-scored on the real excerpts: per generated piece, the mean cosine
  similarity to real excerpts of its own composer minus that to the other composers';
  averaged. The same figure for real test excerpts against the train ones is the ceiling
  a perfectly conditioned generator would reach.
- The music-metric distances (`generated.compare`) to real held-out excerpts, overall and
  per composer.
- Latent space: the silhouette of embeddings (the VAE's posterior means of test windows)
  grouped by label, and a 2-D PCA plot coloured by label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from midipipe.core.io import atomic_path
from midipipe.evaluation import generated as ev

FEATURE_SPACE = "music_metrics.FEATURES, z-scored on the real excerpts"


# -- relative cosine similarity --------------------------------------------------------------


def relative_cosine(
    x: np.ndarray, labels: Sequence[int], ref_x: np.ndarray, ref_labels: Sequence[int]
) -> float:
    """Mean over rows of x: cosine similarity to `ref_x` rows of the same label minus to rows
    of other labels (z-scored with the reference's statistics). NaN when undefined."""
    labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
    if not len(x) or len(np.unique(ref_labels)) < 2:
        return math.nan
    mean, std = ref_x.mean(0), ref_x.std(0)
    std[std == 0] = 1.0

    def unit(a: np.ndarray) -> np.ndarray:
        a = (a - mean) / std
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)

    sim = unit(x) @ unit(ref_x).T
    rel = [
        sim[i, ref_labels == y].mean() - sim[i, ref_labels != y].mean()
        for i, y in enumerate(labels)
        if (ref_labels == y).any()
    ]
    return float(np.mean(rel)) if rel else math.nan


# -- latent space ----------------------------------------------------------------------------


def latent_space(
    z: np.ndarray,
    labels: Sequence[int],
    names: dict[int, str],
    png,
    centres: np.ndarray | None = None,
) -> dict:
    """Silhouette of `z` grouped by label, and a PCA plot (with `centres`, e.g. the prior's
    component means, as crosses). The silhouette is null with fewer than 2 labels."""
    labels = np.asarray(labels)
    n_labels = len(np.unique(labels))
    ok = n_labels >= 2 and len(z) > n_labels
    out = {
        "latent_points": len(z),
        "latent_labels": n_labels,
        "silhouette": float(silhouette_score(z, labels)) if ok else None,
    }
    if png is None:
        return out
    if len(z) < 2:
        ev.plot_message(png, "no latent plot: fewer than 2 held-out windows")
        return out
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pca = PCA(n_components=2).fit(z)
    xy = pca.transform(z)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k, cid in enumerate(sorted(set(labels.tolist()))):
        pts = xy[labels == cid]
        color = f"C{k % 10}"
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.7, color=color, label=names.get(cid, cid))
        if centres is not None:
            c = pca.transform(centres[cid][None])[0]
            ax.scatter(*c, marker="X", s=120, color=color, edgecolor="black")
    var = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({var[0]:.0%})")
    ax.set_ylabel(f"PC2 ({var[1]:.0%})")
    sil = "n/a" if out["silhouette"] is None else f"{out['silhouette']:.3f}"
    ax.set_title(
        f"posterior means of held-out windows (silhouette {sil}; X: prior means)", fontsize=8
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


# -- the whole check -------------------------------------------------------------------------


def conditioning(
    tokenizer,
    generated: Sequence[ev.Piece],
    real_train: Sequence[ev.Piece],
    real_test: Sequence[ev.Piece],
    composers: Sequence[tuple[str, int]],
    prefix: str = "gen",
) -> dict:
    """Relative cosine similarity of `generated` pieces against real train excerpts of the
    same `composers` (name, id), beside real test excerpts' own figure, and the music-metric
    distances of the generated pieces to the real test excerpts (`<prefix>_<metric>_oa`,
    overall and per composer); flat, null where undefined. The composer judge is
    `judge.judge_conditioning`."""
    ids = [cid for _, cid in composers]
    train = [p for p in real_train if p.composer_id in ids]
    test = [p for p in real_test if p.composer_id in ids]
    _, train_x, _ = ev.describe(tokenizer, train)
    train_y = [p.composer_id for p in train]
    gen_rows, gen_x, _ = ev.describe(tokenizer, generated)
    test_rows, test_x, _ = ev.describe(tokenizer, test)
    gen_y = [p.composer_id for p in generated]
    test_y = [p.composer_id for p in test]
    out = {
        "feature_space": FEATURE_SPACE,
        "distances": ev.DISTANCES,
        "relative_cosine": relative_cosine(gen_x, gen_y, train_x, train_y),
        "relative_cosine_real_test": relative_cosine(test_x, test_y, train_x, train_y),
        **ev.compare(test_rows, gen_rows, prefix),
        **ev.compare_by_composer(test_rows, test_y, gen_rows, gen_y, composers, prefix),
    }
    return ev.finite(out)
