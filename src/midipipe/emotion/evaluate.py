"""Scores of the per-bar estimators on held-out pieces: the MLP on each latent input, the rule
estimate (not learned) and the mean predictor (the training pieces' mean target).

Folds are sklearn `GroupKFold` over pieces grouped by song_id, so no piece (nor another clip of
its song) is ever on both sides. Per-bar CCC, Pearson r and RMSE are computed on the test
pieces' listener-rated bars (`Bars.rated`; on piece-label targets only when no bar is rated),
and piece-level sign accuracy compares the sign of each test piece's mean predicted valence
(arousal) with the sign of its own label.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from sklearn.model_selection import GroupKFold

from midipipe.core.params import TrainParams
from midipipe.emotion.regressor import (
    MLPParams,
    concordance,
    config_for,
    estimator_of,
    fit_mlp,
    predict,
)
from midipipe.emotion.targets import Bars

log = logging.getLogger(__name__)

TARGETS = ("valence", "arousal")
METRICS = ("ccc", "r", "rmse", "sign_acc")


def pearson(pred: np.ndarray, target: np.ndarray) -> float | None:
    """None when either side is constant (r is undefined, e.g. for the mean predictor)."""
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return None
    return float(np.corrcoef(pred, target)[0, 1])


def bar_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float | None]:
    """CCC, Pearson r and RMSE per axis of [N, 2] valence/arousal arrays."""
    ccc = concordance(
        torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    ).tolist()
    out: dict[str, float | None] = {}
    for i, name in enumerate(TARGETS):
        out[f"ccc_{name}"] = float(ccc[i])
        out[f"r_{name}"] = pearson(pred[:, i], target[:, i])
        out[f"rmse_{name}"] = float(np.sqrt(np.mean((pred[:, i] - target[:, i]) ** 2)))
    return out


def sign_accuracy(piece_means: np.ndarray, piece_targets: np.ndarray) -> dict[str, float | None]:
    """Share of pieces whose mean predicted sign matches their label's (label 0 or NaN: skipped)."""
    out: dict[str, float | None] = {}
    for i, name in enumerate(TARGETS):
        known = np.isfinite(piece_targets[:, i]) & (piece_targets[:, i] != 0)
        hits = np.sign(piece_means[known, i]) == np.sign(piece_targets[known, i])
        out[f"sign_acc_{name}"] = float(hits.mean()) if known.any() else None
    return out


def scoring_mask(bars: Bars) -> tuple[np.ndarray, str]:
    """Which bars metrics score: listener-rated ones, or piece-labelled ones when none is."""
    if bars.rated.any():
        return bars.rated, "listener_bars"
    return bars.weights > 0, "piece_labels"


def piece_folds(groups: list[str], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) piece indices; one song's pieces always fall on one side (none when
    k < 2: no k-fold table)."""
    n_groups = len(set(groups))
    if n_groups < 2 or k < 2:
        return []
    splitter = GroupKFold(n_splits=min(k, n_groups), shuffle=True, random_state=seed)
    index = np.arange(len(groups))
    return [(tr, te) for tr, te in splitter.split(index, groups=groups)]


def _label(estimator: str, name: str) -> str:
    return f"mlp_{name}" if estimator.startswith("mlp_") else estimator


def baselines(bars: Bars, train: np.ndarray, test: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(estimator, input, predictions on every bar of `test`) of the rules and of the mean
    predictor, whose constant is the weighted mean target of the `train` pieces."""
    fit_rows = bars.trainable(train)
    w = bars.weights[fit_rows, None]
    mean = (w * bars.targets[fit_rows]).sum(0) / w.sum()
    test_rows = bars.rows(test)
    return [
        ("rules", "midi", bars.rules[test_rows]),
        ("mean", "-", np.tile(mean, (len(test_rows), 1))),
    ]


def score(
    bars: Bars, test: np.ndarray, candidates: list[tuple[str, str, np.ndarray]]
) -> list[dict]:
    """One metrics row per (estimator, input, predictions on every bar of the `test` pieces)."""
    mask, _ = scoring_mask(bars)
    test_rows = bars.rows(test)
    scored = mask[test_rows]
    lengths = np.diff(bars.offsets)[test]
    piece_of_row = np.repeat(np.arange(len(test)), lengths)
    rows = []
    for estimator, name, pred in candidates:
        sums = np.zeros((len(test), 2))
        np.add.at(sums, piece_of_row, pred)
        rows.append(
            {
                "estimator": estimator,
                "input": name,
                "label": _label(estimator, name),
                "bars": int(scored.sum()),
                "pieces": len(test),
                **bar_metrics(pred[scored], bars.targets[test_rows][scored]),
                **sign_accuracy(sums / lengths[:, None], bars.piece_targets[test]),
            }
        )
    return rows


def evaluate_split(
    bars: Bars,
    train: np.ndarray,
    test: np.ndarray,
    inputs: dict[str, np.ndarray],
    codebook_size: int,
    mlp: MLPParams,
    tp: TrainParams,
    compare: list[str],
) -> list[dict]:
    """Fit the MLP on each `compare` input over the `train` pieces, and score it, the rules and
    the mean predictor on the `test` pieces (no rows when either side has nothing to use)."""
    mask, _ = scoring_mask(bars)
    fit_rows = bars.trainable(train)
    test_rows = bars.rows(test)
    if len(fit_rows) == 0 or not mask[test_rows].any():
        return []
    candidates = baselines(bars, train, test)
    for name in compare:
        cfg = config_for(dataclasses.replace(mlp, input=name), inputs[name], codebook_size)
        model = fit_mlp(
            cfg, inputs[name], bars.targets, bars.weights, bars.offsets, fit_rows, tp, mlp.loss
        )
        pred = predict(model, inputs[name], bars.offsets, test_rows)
        candidates.append((estimator_of(name), name, pred))
    return score(bars, test, candidates)


def cross_validate(
    bars: Bars,
    pieces: np.ndarray,
    inputs: dict[str, np.ndarray],
    codebook_size: int,
    mlp: MLPParams,
    tp: TrainParams,
    compare: list[str],
    folds: int,
    seed: int,
) -> list[dict]:
    """The k-fold table over `pieces`: one row per fold and estimator."""
    table = []
    groups = [bars.groups[k] for k in pieces]
    for fold, (tr, te) in enumerate(piece_folds(groups, folds, seed)):
        rows = evaluate_split(bars, pieces[tr], pieces[te], inputs, codebook_size, mlp, tp, compare)
        table.extend({"fold": fold, **r} for r in rows)
        log.info("fold %d: %s", fold, {r["label"]: round(r["ccc_valence"], 3) for r in rows})
    return table


def summarize(table: list[dict], prefix: str = "kfold") -> tuple[list[dict], dict]:
    """Mean rows over folds (fold = "mean") and flat metrics `<prefix>_<label>_<metric>_<axis>`,
    with `<prefix>_best_input`: the MLP input with the highest mean CCC over both axes."""
    labels = list(dict.fromkeys(r["label"] for r in table))
    means, flat = [], {}
    for label in labels:
        rows = [r for r in table if r["label"] == label]
        row = {
            "fold": "mean",
            "estimator": rows[0]["estimator"],
            "input": rows[0]["input"],
            "label": label,
            "bars": sum(r["bars"] for r in rows),
            "pieces": sum(r["pieces"] for r in rows),
        }
        for metric in METRICS:
            for axis in TARGETS:
                key = f"{metric}_{axis}"
                values = [r[key] for r in rows if r[key] is not None]
                row[key] = float(np.mean(values)) if values else None
                if row[key] is not None:
                    flat[f"{prefix}_{label}_{key}"] = row[key]
        means.append(row)
    mlp_rows = [r for r in means if r["estimator"].startswith("mlp_")]
    if mlp_rows:
        best = max(mlp_rows, key=lambda r: (r["ccc_valence"] + r["ccc_arousal"]) / 2)
        flat[f"{prefix}_best_input"] = best["input"]
    return means, flat
