"""Single- and multi-label metrics of the genre models, the threshold tuned on valid, and the
pooling of phrase (or piece) probabilities into piece (or song) ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def single_label_metrics(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], prefix: str = ""
) -> dict[str, float]:
    """Accuracy, macro-F1 (sklearn's: over the labels seen in y or predicted) and per-class
    precision / recall / support of argmax predictions."""
    if not len(y):
        return {f"{prefix}n": 0}
    pred = probs.argmax(1)
    out = {f"{prefix}n": int(len(y)), f"{prefix}accuracy": float((pred == y).mean())}
    seen = np.union1d(y, pred)
    out[f"{prefix}macro_f1"] = float(
        precision_recall_fscore_support(y, pred, labels=seen, average="macro", zero_division=0)[2]
    )
    p, r, _, s = precision_recall_fscore_support(
        y, pred, labels=range(len(classes)), zero_division=0
    )
    for k, name in enumerate(classes):
        out[f"{prefix}precision_{name}"] = float(p[k])
        out[f"{prefix}recall_{name}"] = float(r[k])
        out[f"{prefix}support_{name}"] = int(s[k])
    return out


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def multilabel_metrics(
    y: np.ndarray, probs: np.ndarray, threshold: float, prefix: str = ""
) -> dict[str, float]:
    """Micro / macro F1, sample Jaccard, Hamming loss and subset accuracy of `probs >=
    threshold` (sklearn's definitions, zero_division=0), and `test_acc`: the share of pieces
    whose top-1 tag is one of their true tags (the MidiCaps plan's figure)."""
    y = y.astype(bool)
    if not len(y):
        return {f"{prefix}n": 0}
    pred = probs >= threshold
    tp, fp, fn = ((pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0))
    per_label = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
    micro = _safe_div(np.array(2.0 * tp.sum()), np.array(2.0 * tp.sum() + fp.sum() + fn.sum()))
    jaccard = _safe_div((pred & y).sum(1).astype(float), (pred | y).sum(1).astype(float))
    top1 = y[np.arange(len(y)), probs.argmax(1)]
    return {
        f"{prefix}n": int(len(y)),
        f"{prefix}micro_f1": float(micro),
        f"{prefix}macro_f1": float(per_label.mean()),
        f"{prefix}jaccard": float(jaccard.mean()),
        f"{prefix}hamming_loss": float((pred != y).mean()),
        f"{prefix}subset_accuracy": float((pred == y).all(1).mean()),
        f"{prefix}test_acc": float(top1.mean()),
    }


def tune_threshold(y: np.ndarray, probs: np.ndarray, grid: Sequence[float] = THRESHOLDS) -> float:
    """The threshold of `grid` with the best micro-F1 (ties: the one nearest 0.5)."""
    if not len(y):
        return 0.5
    scores = [(multilabel_metrics(y, probs, t)["micro_f1"], -abs(t - 0.5), t) for t in grid]
    return float(max(scores)[2])


def pool_mean(groups: Sequence, probs: np.ndarray) -> tuple[list, np.ndarray]:
    """Mean probabilities per group, groups in first-seen order."""
    keys = list(dict.fromkeys(groups))
    index = {k: i for i, k in enumerate(keys)}
    sums = np.zeros((len(keys), probs.shape[1]))
    counts = np.zeros(len(keys))
    for g, row in zip(groups, probs, strict=True):
        sums[index[g]] += row
        counts[index[g]] += 1
    return keys, sums / np.maximum(counts, 1)[:, None]
