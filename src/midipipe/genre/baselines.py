"""Baselines the genre models are reported beside: logistic regressions on file metadata only,
on the hand-crafted musical statistics (`evaluation.features`), and on mean-pooled MuseTok
latents (stage 04) of the pieces that have them.

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
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from midipipe.core.errors import BadMidi
from midipipe.data.midi import load_score
from midipipe.data.store import Corpus
from midipipe.evaluation.features import feature_matrix, fit_linear
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


def metadata_matrix(paths: Sequence[str | Path | bytes]) -> np.ndarray:
    """[len(paths), len(METADATA_FEATURES)] of files or their bytes; an unreadable file gets a
    row of zeros."""
    out = np.zeros((len(paths), len(METADATA_FEATURES)), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            out[i] = metadata_features(load_score(path))
        except BadMidi as exc:
            log.warning(
                "metadata baseline: %s: %s", f"piece {i}" if isinstance(path, bytes) else path, exc
            )
    return out


def mean_latents(
    latents_dir: str | Path, piece_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """([len(piece_ids), D] each piece's per-bar latents averaged, [len(piece_ids)] whether
    stage 04 encoded the piece).

    A piece stage 04 did not encode (MuseTok tokenization rejected it, or it has no bar) gets
    a row of zeros and False. No `index.parquet` in `latents_dir`: every piece is missing."""
    folder = Path(latents_dir)
    if not (folder / "index.parquet").exists():
        return np.zeros((len(piece_ids), 0), dtype=np.float32), np.zeros(len(piece_ids), bool)
    index = {r["piece_id"]: r for r in pq.read_table(folder / "index.parquet").to_pylist()}
    have = np.array([pid in index and bool(index[pid]["n_bars"]) for pid in piece_ids], bool)
    names = {index[pid]["part"] for pid, ok in zip(piece_ids, have, strict=True) if ok}
    parts = {name: load_file(str(folder / name))["latents"] for name in names}
    dim = next(iter(parts.values())).shape[1] if parts else 0
    out = np.zeros((len(piece_ids), dim), dtype=np.float32)
    for i, pid in enumerate(piece_ids):
        if have[i]:
            r = index[pid]
            out[i] = parts[r["part"]][r["start"] : r["start"] + r["n_bars"]].float().mean(0).numpy()
    return out, have


BASELINE_C = 0.5  # inverse L2 strength of every baseline's logistic regression


def _logreg(seed: int) -> LogisticRegression:
    return LogisticRegression(
        max_iter=2000, C=BASELINE_C, class_weight="balanced", random_state=seed
    )


def single_label(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, seed: int = 0
) -> np.ndarray:
    """Class probabilities [len(x_test), n_classes] from a standardised, class-balanced
    multinomial logistic regression (classes absent from training get probability 0): the
    model `fit_linear` serves."""
    classes = [str(k) for k in range(n_classes)]
    model = fit_linear(x_train, y_train, classes, BASELINE_C, seed)
    if not len(x_test):
        return np.zeros((0, n_classes), dtype=np.float32)
    return model.predict_proba(x_test)


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


def corpus_music(corpus_dir: str | Path | None, manifest: str | Path) -> Callable | None:
    """piece ids -> their MIDI bytes from the corpus store, read on access; None without it."""
    if corpus_dir is None:
        return None
    return Corpus(corpus_dir, manifest).lazy


@dataclass
class Inputs:
    """Each baseline's feature matrix for the pieces of every split, and what became of the
    latent baseline (run, or why not)."""

    x: dict[str, list[np.ndarray]] = field(default_factory=dict)
    latent_status: str = "no latents given"
    have_latents: list[np.ndarray] | None = None  # per split: rows with latents

    def rows(self, name: str, split: int) -> np.ndarray | slice:
        """The rows of split `split` that baseline `name` is fitted and scored on."""
        if name == "latent" and self.have_latents is not None:
            return self.have_latents[split]
        return slice(None)


def inputs(
    splits: Sequence[Sequence[str]], music: Callable | None, latents_dir: str | Path | None
) -> Inputs:
    """`metadata` and `handcrafted` when the MIDI is at hand (`music`: `corpus_music`);
    `latent` on the pieces stage 04 encoded (`Inputs.have_latents` marks them; the others are
    left out of it)."""
    out = Inputs()
    if music is not None:
        files = [music(ids) for ids in splits]
        out.x["metadata"] = [metadata_matrix(f) for f in files]
        out.x["handcrafted"] = [feature_matrix(f) for f in files]
    if latents_dir is None:
        return out
    got = [mean_latents(latents_dir, ids) for ids in splits]
    have = [h for _, h in got]
    n, with_latents = sum(len(h) for h in have), sum(int(h.sum()) for h in have)
    if not all(h.any() for h in have):
        out.latent_status = f"skipped: a split has no piece with latents in {latents_dir}"
    else:
        out.x["latent"] = [x for x, _ in got]
        out.have_latents = have
        out.latent_status = f"done on the {with_latents} of {n} pieces with latents"
    log.info("latent baseline: %s", out.latent_status)
    return out


def single_label_scores(
    x: Inputs,
    y_train: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Piece-level accuracy / macro-F1 of each baseline in `x` (train, test matrices first)."""
    out: dict[str, Any] = {}
    for name, (x_tr, x_te, *_) in x.x.items():
        tr, te = x.rows(name, 0), x.rows(name, 1)
        probs = single_label(x_tr[tr], y_train[tr], x_te[te], len(classes), seed)
        got = single_label_metrics(y_test[te], probs, classes)
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
        tr, va, te = (x.rows(name, k) for k in range(3))
        p_va, p_te = multi_label(x_tr[tr], y_train[tr], x_va[va], x_te[te], seed=seed)
        got = multilabel_metrics(y_test[te], p_te, tune_threshold(y_valid[va], p_va))
        for key in ("micro_f1", "macro_f1", "test_acc"):
            out[f"{name}_baseline_{key}"] = got.get(key, 0.0)
    out["latent_baseline"] = x.latent_status
    return out
