"""Baselines the genre models are reported beside: a logistic regression on file metadata only,
and one on mean-pooled MuseTok latents (stage 04) when they exist.

The metadata baseline sees no notes, only what a file's layout gives away: track count,
programs, drums, tempo, note density and length. Where it does as well as a model, the model
may have learned the corpus's file layout rather than the music.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import symusic
from safetensors.torch import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from midipipe.core.errors import BadMidi
from midipipe.data.midi import load_score
from midipipe.genre.metrics import multilabel_metrics, single_label_metrics, tune_threshold

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


MAX_MISSING_LATENTS = 0.05  # share of pieces without latents the latent baseline tolerates


def mean_latents(latents_dir: str | Path, piece_ids: Sequence[str]) -> tuple[np.ndarray, int]:
    """([len(piece_ids), D] each piece's per-bar latents averaged, pieces without latents).

    A piece stage 04 did not encode (MuseTok tokenization rejected it, or it has no bar) gets
    a row of zeros, as an unreadable file does in `metadata_matrix`; callers decide how many
    such rows they accept. No `index.parquet` in `latents_dir`: every piece is missing."""
    folder = Path(latents_dir)
    if not (folder / "index.parquet").exists():
        return np.zeros((len(piece_ids), 0), dtype=np.float32), len(piece_ids)
    index = {r["piece_id"]: r for r in pq.read_table(folder / "index.parquet").to_pylist()}
    have = {pid for pid in piece_ids if pid in index and index[pid]["n_bars"]}
    names = {index[pid]["part"] for pid in have}
    parts = {name: load_file(str(folder / name))["latents"] for name in names}
    dim = next(iter(parts.values())).shape[1] if parts else 0
    out = np.zeros((len(piece_ids), dim), dtype=np.float32)
    for i, pid in enumerate(piece_ids):
        if pid in have:
            r = index[pid]
            out[i] = parts[r["part"]][r["start"] : r["start"] + r["n_bars"]].float().mean(0).numpy()
    return out, sum(pid not in have for pid in piece_ids)


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


# -- scored beside the models ----------------------------------------------------------------


def midi_paths(rows: dict[str, dict], midi_dir: str | Path | None) -> Callable | None:
    """piece id -> its MIDI file under `midi_dir` (manifest `path`); None without MIDI."""
    if midi_dir is None:
        return None
    return lambda pid: Path(midi_dir) / rows[pid]["path"]


@dataclass
class Inputs:
    """Each baseline's feature matrix for the pieces of every split, and what became of the
    latent baseline (run, or why not)."""

    x: dict[str, list[np.ndarray]] = field(default_factory=dict)
    latent_status: str = "no latents given"


def inputs(
    splits: Sequence[Sequence[str]], midi_path: Callable | None, latents_dir: str | Path | None
) -> Inputs:
    """`metadata` when the MIDI files are at hand; `latent` when stage 04 encoded all but
    `MAX_MISSING_LATENTS` of these pieces."""
    out = Inputs()
    if midi_path is not None:
        out.x["metadata"] = [metadata_matrix([midi_path(pid) for pid in ids]) for ids in splits]
    if latents_dir is None:
        return out
    got = [mean_latents(latents_dir, ids) for ids in splits]
    n = sum(len(ids) for ids in splits)
    missing = sum(m for _, m in got)
    if missing > MAX_MISSING_LATENTS * n:
        out.latent_status = f"skipped: {missing} of {n} pieces have no latents in {latents_dir}"
    else:
        out.x["latent"] = [x for x, _ in got]
        out.latent_status = f"done ({missing} of {n} pieces without latents: zero rows)"
    log.info("latent baseline: %s", out.latent_status)
    return out


def single_label_scores(
    x: Inputs,
    y_train: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Piece-level accuracy / macro-F1 of each baseline in `x` (train, test matrices)."""
    out: dict[str, Any] = {}
    for name, (x_tr, x_te) in x.x.items():
        probs = single_label(x_tr, y_train, x_te, len(classes), seed)
        got = single_label_metrics(y_test, probs, classes)
        out[f"{name}_baseline_piece_accuracy"] = got.get("accuracy", 0.0)
        out[f"{name}_baseline_piece_macro_f1"] = got.get("macro_f1", 0.0)
    out["latent_baseline"] = x.latent_status
    return out


def multi_label_scores(
    x: Inputs,
    y_train: np.ndarray,
    y_valid: np.ndarray,
    y_test: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """Micro / macro F1 and test_acc of each baseline in `x` (train, valid, test matrices),
    the threshold tuned on valid as the model's is."""
    out: dict[str, Any] = {}
    for name, (x_tr, x_va, x_te) in x.x.items():
        p_va, p_te = multi_label(x_tr, y_train, x_va, x_te, seed=seed)
        got = multilabel_metrics(y_test, p_te, tune_threshold(y_valid, p_va))
        for key in ("micro_f1", "macro_f1", "test_acc"):
            out[f"{name}_baseline_{key}"] = got.get(key, 0.0)
    out["latent_baseline"] = x.latent_status
    return out
