"""The hand-crafted baseline's input: musical statistics of one piece, and a class-balanced
logistic regression on them that can be saved as safetensors and served.

`piece_features` extends `music_metrics.features` (the six MusPy metrics, pitch-class and
duration histograms, register, velocity) with what separates emotions and composers in the
literature: the key-profile mode score and the pitch-class histogram rotated to the best key
(transposition-invariant), melodic and harmonic interval histograms, inter-onset intervals,
onsets per second, tempo, register percentiles, velocity spread and the instrumentation (GM
families). Every learned classifier is reported beside a logistic regression on these.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic
import torch
from safetensors.torch import load_file, save_file

from midipipe.core.errors import BadMidi
from midipipe.core.io import atomic_path
from midipipe.data.midi import load_score
from midipipe.evaluation import music_metrics as mm

log = logging.getLogger(__name__)

IOI_EDGES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, np.inf)  # quarter notes
EXTRA = (
    "mode_major_minor",
    "key_strength",
    *(f"pc_key_{k}" for k in range(12)),
    *(f"melodic_interval_{k}" for k in range(13)),
    *(f"harmonic_interval_{k}" for k in range(12)),
    *(f"ioi_{lo:g}_{hi:g}" for lo, hi in zip(IOI_EDGES, IOI_EDGES[1:], strict=False)),
    "onsets_per_s",
    "notes_per_s",
    "tempo_log2",
    "tempo_changes",
    "pitch_p10",
    "pitch_p90",
    "velocity_std",
    "offbeat_onsets",
    "duration_log2_s",
)
FEATURES = (*mm.FEATURES, *mm.INSTRUMENTS, *EXTRA)


def _key_features(hist: np.ndarray) -> list[float]:
    """Major-minor score, best correlation, and the histogram rotated so the tonic is 0."""
    if not hist.any():
        return [0.0, 0.0, *np.zeros(12)]
    corr = mm.key_correlations(hist[None].astype(np.float64))[0]
    best = int(corr.argmax())
    return [corr[:12].max() - corr[12:].max(), corr[best], *np.roll(hist, -(best % 12))]


def _histogram(values: np.ndarray, bins: int) -> np.ndarray:
    counts = np.bincount(values, minlength=bins)[:bins].astype(float)
    return counts / counts.sum() if counts.sum() else counts


def _intervals(n: mm.Notes) -> tuple[np.ndarray, np.ndarray]:
    """Melodic (top voice, 0..12+ semitones) and harmonic (within an onset, mod 12) shares."""
    keep = n.pitched
    onset, pitch = n.onset[keep], n.pitch[keep]
    if not len(onset):
        return np.zeros(13), np.zeros(12)
    order = np.lexsort((pitch, onset))
    onset, pitch = onset[order], pitch[order]
    last = np.r_[onset[1:] != onset[:-1], True]  # highest note of each onset
    top = pitch[last]
    melodic = np.minimum(np.abs(np.diff(top)), 12)
    same = onset[1:] == onset[:-1]
    harmonic = (pitch[1:] - pitch[:-1])[same] % 12
    return _histogram(melodic, 13), _histogram(harmonic, 12)


def piece_features(score: symusic.Score) -> np.ndarray:
    """`FEATURES` of one score as floats (undefined values 0: the scaler centres them)."""
    n = mm.notes_of(score)
    base = mm.features(score)
    pitched = n.pitch[n.pitched]
    melodic, harmonic = _intervals(n)
    onsets = np.unique(n.onset)
    ioi = np.histogram(np.diff(onsets), bins=IOI_EDGES)[0].astype(float)
    seconds = max(float(score.to("second").end()), 1e-3)
    qpm = np.array([t.qpm for t in score.tempos] or [120.0])
    beat_pos = onsets % 1.0
    extra = [
        *_key_features(mm.pitch_class_histogram(n)),
        *melodic,
        *harmonic,
        *(ioi / max(1.0, ioi.sum())),
        len(onsets) / seconds,
        len(n.onset) / seconds,
        float(np.log2(np.clip(np.median(qpm), 20, 400))),
        float(np.log1p(len(qpm) - 1)),
        *((np.percentile(pitched, [10, 90]) / 127) if len(pitched) else (0.0, 0.0)),
        n.velocity.std() / 127 if len(n.velocity) else 0.0,
        float((beat_pos > 1e-3).mean()) if len(onsets) else 0.0,
        float(np.log2(seconds)),
    ]
    out = np.concatenate([base, mm.instruments(score), np.asarray(extra, dtype=np.float64)])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def feature_matrix(paths: Sequence[str | Path | bytes]) -> np.ndarray:
    """[len(paths), len(FEATURES)] of files or their bytes; an unreadable one gets a row of
    zeros (logged)."""
    from tqdm import tqdm

    out = np.zeros((len(paths), len(FEATURES)), dtype=np.float32)
    for i, path in enumerate(tqdm(paths, desc="features", unit="file", leave=False)):
        try:
            out[i] = piece_features(load_score(path))
        except (BadMidi, ValueError) as exc:
            name = f"piece {i}" if isinstance(path, bytes) else path
            log.warning("hand-crafted features: %s: %s", name, exc)
    return out


# -- the classifier on them ------------------------------------------------------------------


@dataclass
class LinearModel:
    """Standardise, then a multinomial logistic regression: probabilities without sklearn."""

    mean: np.ndarray  # [F]
    scale: np.ndarray  # [F]
    coef: np.ndarray  # [K, F] (K = n_classes; classes absent in training get -inf)
    intercept: np.ndarray  # [K]
    classes: list[str]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(1, keepdims=True)).astype(np.float32)

    def save(self, folder: str | Path, meta: dict) -> None:
        """`handcrafted.safetensors` + `handcrafted.json` in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "bias": self.intercept}
        with atomic_path(folder / "handcrafted.safetensors") as tmp:
            save_file(
                {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in arrays.items()}, str(tmp)
            )
        with atomic_path(folder / "handcrafted.json") as tmp:
            info = {"classes": self.classes, "features": list(FEATURES), **meta}
            tmp.write_text(json.dumps(info, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> LinearModel:
        folder = Path(folder)
        t = {k: v.numpy() for k, v in load_file(str(folder / "handcrafted.safetensors")).items()}
        info = json.loads((folder / "handcrafted.json").read_text())
        return cls(t["mean"], t["scale"], t["coef"], t["bias"], info["classes"])


DEFAULT_C = 0.1  # inverse L2 strength when there is nothing to tune it on


def fit_linear(
    x: np.ndarray, y: np.ndarray, classes: Sequence[str], c: float = DEFAULT_C, seed: int = 0
) -> LinearModel:
    """Class-balanced logistic regression on standardised `x`; y indexes `classes`. sklearn is
    imported here: the readers of these features (annotate's workers among them) never fit."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(max_iter=2000, C=c, class_weight="balanced", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit((x - scaler.mean_) / scale, y)
    coef = np.zeros((len(classes), x.shape[1]))
    bias = np.full(len(classes), -1e9)
    if len(model.classes_) == 2:  # sklearn keeps one row for two classes
        coef[model.classes_] = np.stack([-model.coef_[0], model.coef_[0]]) / 2
        bias[model.classes_] = np.array([-model.intercept_[0], model.intercept_[0]]) / 2
    else:
        coef[model.classes_] = model.coef_
        bias[model.classes_] = model.intercept_
    return LinearModel(scaler.mean_, scale, coef, bias, list(classes))
