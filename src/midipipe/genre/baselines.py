"""Baselines the genre models are reported beside: a logistic regression on file metadata only,
and one on mean-pooled MuseTok latents (stage 04) when they exist.

The metadata baseline sees no notes, only what a file's layout gives away: track count,
programs, drums, tempo, note density and length. Where it does as well as a model, the model
may have learned the corpus's file layout rather than the music.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import symusic
from safetensors.torch import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from midipipe.midi import BadMidi, load_score

log = logging.getLogger(__name__)

METADATA_FEATURES = (
    "n_tracks",
    "n_programs",
    "has_drums",
    "tempo_qpm",
    "n_tempo_changes",
    "notes_per_s",
    "duration_s",
    *(f"program_{i}" for i in range(128)),
)


def metadata_features(score: symusic.Score) -> np.ndarray:
    """`METADATA_FEATURES` of one score (no pitch, rhythm or harmony)."""
    tracks = [t for t in score.tracks if len(t.notes)]
    programs = np.zeros(128, dtype=np.float32)
    for t in tracks:
        if not t.is_drum:
            programs[t.program] = 1.0
    tempos = [t.qpm for t in score.tempos] or [120.0]
    duration = float(score.to("second").end())
    n_notes = sum(len(t.notes) for t in tracks)
    head = [
        len(tracks),
        programs.sum(),
        float(any(t.is_drum for t in tracks)),
        float(np.mean(tempos)),
        float(len(tempos) - 1),
        n_notes / max(duration, 1e-3),
        duration,
    ]
    return np.concatenate([np.asarray(head, dtype=np.float32), programs])


def metadata_matrix(paths: Sequence[str | Path]) -> np.ndarray:
    """[len(paths), len(METADATA_FEATURES)]; an unreadable file gets a row of zeros."""
    out = np.zeros((len(paths), len(METADATA_FEATURES)), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            out[i] = metadata_features(load_score(Path(path)))
        except BadMidi as exc:
            log.warning("metadata baseline: %s: %s", path, exc)
    return out


def mean_latents(latents_dir: str | Path, piece_ids: Sequence[str]) -> np.ndarray | None:
    """[len(piece_ids), D]: each piece's per-bar latents averaged; None unless stage 04's
    output holds every one of these pieces."""
    folder = Path(latents_dir)
    if not (folder / "index.parquet").exists():
        return None
    index = {r["piece_id"]: r for r in pq.read_table(folder / "index.parquet").to_pylist()}
    missing = [pid for pid in piece_ids if pid not in index or not index[pid]["n_bars"]]
    if missing:
        log.info("latent baseline skipped: %d pieces have no latents in %s", len(missing), folder)
        return None
    parts = {
        name: load_file(str(folder / name))["latents"]
        for name in {index[pid]["part"] for pid in piece_ids}
    }
    rows = [
        parts[index[pid]["part"]][index[pid]["start"] : index[pid]["start"] + index[pid]["n_bars"]]
        .float()
        .mean(0)
        .numpy()
        for pid in piece_ids
    ]
    return np.stack(rows) if rows else None


def _logreg(seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=2000, C=0.5, class_weight="balanced", random_state=seed)


def single_label(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, seed: int = 0
) -> np.ndarray:
    """Class probabilities [len(x_test), n_classes] from a standardised, class-balanced
    multinomial logistic regression (classes absent from training get probability 0)."""
    model = make_pipeline(StandardScaler(), _logreg(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    out = np.zeros((len(x_test), n_classes), dtype=np.float32)
    if len(x_test):
        out[:, model.classes_] = model.predict_proba(x_test)
    return out


def multi_label(
    x_train: np.ndarray, y_train: np.ndarray, *x_eval: np.ndarray, seed: int = 0
) -> list[np.ndarray]:
    """Tag probabilities [len(x), n_tags] for each of `x_eval`: one balanced logistic
    regression per tag."""
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(_logreg(seed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant tags and slow convergence are fine here
        model.fit(x_train, y_train.astype(int))
        return [
            model.predict_proba(x).astype(np.float32)
            if len(x)
            else np.zeros((0, y_train.shape[1]), dtype=np.float32)
            for x in x_eval
        ]
