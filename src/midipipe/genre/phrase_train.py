"""Stage 05, the phrase classifier (the XMIDI plan).

Every labelled piece is cut into [CLS] phrases of `bars_per_phrase` bars; an encoder learns the
piece's label from each phrase alone, with class-weighted cross-entropy (weights from the train
split's phrase counts) and random pitch transposition. Pieces are reported by the mean of their
phrases' probabilities, and songs by the mean over their pieces. Splits come from the
manifest, which groups them by song.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from midipipe.core.device import resolve_device
from midipipe.core.errors import NothingToLearn
from midipipe.core.params import TrainParams
from midipipe.evaluation.features import fit_linear
from midipipe.genre import baselines
from midipipe.genre.baselines import BASELINE_C
from midipipe.genre.encoder import Encoder, EncoderConfig, save_encoder
from midipipe.genre.labels import choose_label, label_of, read_manifest, splits_in_use
from midipipe.genre.metrics import pool_mean, single_label_metrics
from midipipe.genre.params import GenreParams
from midipipe.genre.phrases import TOKENIZER_FILE, Vocab, pad_batch, phrases, random_transpose
from midipipe.tokens import remi
from midipipe.tokens.dataset import rows_by_split
from midipipe.training.fit import Fit, fit
from midipipe.training.hooks import EarlyStop, epochs_for_budget, timed, train_seconds

log = logging.getLogger(__name__)


@dataclass
class PhraseSet:
    """The phrases of one split, each with its class and piece."""

    seqs: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    piece: list[int] = field(default_factory=list)  # index into piece_ids
    piece_ids: list[str] = field(default_factory=list)
    piece_labels: list[int] = field(default_factory=list)
    truncated: int = 0


def phrase_sets(
    rows: dict[str, Iterable[tuple]], labels: dict[str, str | None], vocab: Vocab, p: GenreParams
) -> tuple[list[str], dict[str, PhraseSet], dict[str, int]]:
    """Classes (labels with >= min_class_pieces train pieces that have a phrase), one
    PhraseSet per split, and the counts of pieces left out and why."""
    cut: dict[str, list[tuple[str, str, list]]] = {}
    counts = Counter()
    for split, items in rows.items():
        for pid, ids, bars in items:
            name = labels.get(pid)
            if name is None:
                counts["pieces_unlabelled"] += 1
                continue
            cap = p.max_phrases_per_piece if split == "train" else 0  # a piece: all its phrases
            c = phrases(ids, bars, vocab, p.bars_per_phrase, p.max_len, cap)
            if not c.seqs:
                counts["pieces_too_short"] += 1
                continue
            cut.setdefault(split, []).append((pid, name, c))
    per_class = Counter(name for _, name, _ in cut.get("train", []))
    classes = sorted(n for n, k in per_class.items() if k >= p.min_class_pieces)
    if len(classes) < 2:
        raise NothingToLearn(
            f"genre: fewer than 2 labels ({p.label}) with >= "
            f"genre.min_class_pieces={p.min_class_pieces} train pieces: "
            f"{dict(per_class)}"
        )
    index = {c: k for k, c in enumerate(classes)}
    sets = {split: PhraseSet() for split in ("train", "valid", "test")}
    for split, items in cut.items():
        s = sets[split]
        for pid, name, c in items:
            if name not in index:
                counts["pieces_rare_label"] += 1
                continue
            s.piece_ids.append(pid)
            s.piece_labels.append(index[name])
            s.seqs.extend(c.seqs)
            s.labels.extend([index[name]] * len(c.seqs))
            s.piece.extend([len(s.piece_ids) - 1] * len(c.seqs))
            s.truncated += c.truncated
    return classes, sets, {k: int(v) for k, v in counts.items()}


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """n / (K * n_c): every class weighs as much in the loss as a balanced one would."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    w = len(labels) / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(np.where(counts > 0, w, 0.0), dtype=torch.float32)


def phrase_batches(
    s: PhraseSet,
    vocab: Vocab,
    batch_size: int,
    max_shift: int,
    rng: torch.Generator,
    pool: int = 50,
):
    """Shuffled batches of phrases of similar length (sorted within pools of `pool` batches,
    pools and batches in random order), so little of a batch is padding."""
    order = torch.randperm(len(s.seqs), generator=rng).tolist()
    batches = []
    for lo in range(0, len(order), batch_size * pool):
        group = sorted(order[lo : lo + batch_size * pool], key=lambda i: len(s.seqs[i]))
        batches.extend(group[k : k + batch_size] for k in range(0, len(group), batch_size))
    for b in torch.randperm(len(batches), generator=rng).tolist():
        idx = batches[b]
        seqs = [
            random_transpose(s.seqs[i], vocab, max_shift, rng) if max_shift else s.seqs[i]
            for i in idx
        ]
        yield pad_batch(seqs, vocab.pad_id), torch.tensor([s.labels[i] for i in idx])


@torch.inference_mode()
def phrase_probs(model: Encoder, seqs: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities [len(seqs), n_classes], batched by length."""
    device = next(model.parameters()).device
    out = np.zeros((len(seqs), model.config.n_classes), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        ids = pad_batch([seqs[i] for i in idx], model.config.pad_id).to(device)
        out[idx] = torch.softmax(model(ids).float(), -1).cpu().numpy()
    return out


@dataclass
class PhraseResult:
    job: Fit
    metrics: dict[str, Any]
    classes: list[str]
    test_y: np.ndarray  # phrase level
    test_pred: np.ndarray
    song_y: np.ndarray
    song_pred: np.ndarray
    piece_ids: list[str]  # test pieces, in the order of piece_probs
    piece_probs: np.ndarray


def _build_encoder(p: GenreParams, vocab: Vocab, n_classes: int) -> Encoder:
    cfg = EncoderConfig(
        **{
            **p.model,
            "vocab_size": vocab.size,
            "n_classes": n_classes,
            "pad_id": vocab.pad_id,
            "max_len": p.max_len,
        }
    )
    return Encoder(cfg)


def pool_pieces(probs: np.ndarray, s: PhraseSet) -> np.ndarray:
    """[pieces, classes]: the mean of each piece's phrase probabilities (all its phrases)."""
    piece = np.asarray(s.piece)
    return np.stack([probs[piece == k].mean(0) for k in range(len(s.piece_ids))])


def serve(
    model: Encoder,
    p: GenreParams,
    feats: list[np.ndarray],
    train: PhraseSet,
    valid: PhraseSet,
    test: PhraseSet,
    classes: list[str],
    out_dir: str | Path,
    seed: int,
) -> dict[str, Any]:
    """Which model the stage serves: the phrase model, or the hand-crafted logistic regression
    when its valid pieces' mean log-likelihood is higher (steadier than accuracy on the few
    valid pieces; then it is saved beside the phrase model and scored on test)."""
    x_train, x_test, x_valid = feats
    linear = fit_linear(x_train, np.asarray(train.piece_labels), classes, BASELINE_C, seed)
    y_valid = np.asarray(valid.piece_labels)
    model_valid = pool_pieces(phrase_probs(model, valid.seqs, p.eval_batch_size), valid)
    probs = {"phrase_model": model_valid, "handcrafted": linear.predict_proba(x_valid)}
    scores = {
        k: float(np.log(np.maximum(v[np.arange(len(y_valid)), y_valid], 1e-9)).mean())
        for k, v in probs.items()
    }
    served = "handcrafted" if scores["handcrafted"] > scores["phrase_model"] else "phrase_model"
    out: dict[str, Any] = {
        "served": served,
        "served_choice": "valid pieces' mean log-likelihood "
        + ", ".join(
            f"{k} {scores[k]:.3f} (accuracy {(v.argmax(1) == y_valid).mean():.3f})"
            for k, v in probs.items()
        ),
    }
    for stale in ("handcrafted.json", "handcrafted.safetensors"):
        (Path(out_dir) / stale).unlink(missing_ok=True)
    if served == "handcrafted":
        log.warning("the hand-crafted model beats the phrase model on valid: serving it")
        linear.save(out_dir, {"task": f"genre {p.label}"})
        got = single_label_metrics(
            np.asarray(test.piece_labels), linear.predict_proba(x_test), classes
        )
        out["served_piece_accuracy"] = got["accuracy"]
        out["served_piece_macro_f1"] = got["macro_f1"]
    return out


def train_phrase(
    p: GenreParams,
    tp: TrainParams,
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    out_dir: str | Path = "models/genre_phrase",
    resume_dir: str | Path = "checkpoints/genre_phrase",
    corpus_dir: str | Path | None = "data/corpus",
    latents_dir: str | Path | None = "data/latents",
) -> PhraseResult:
    """Train, keep the best epoch (valid macro-F1) in `out_dir`, evaluate on test, and run
    the baselines on the same test pieces."""
    tokenizer_json = Path(tokens_dir) / TOKENIZER_FILE
    vocab = Vocab.of(remi.load_tokenizer(tokenizer_json))
    rows = read_manifest(manifest)
    choice = choose_label(rows, p.label, p.min_class_pieces)  # NothingToLearn: skip the stage
    p = dataclasses.replace(p, label=choice.label)
    labels = {pid: label_of(r, p.label) for pid, r in rows.items()}
    classes, sets, counts = phrase_sets(rows_by_split(tokens_dir, manifest), labels, vocab, p)
    train, valid, test, eval_split = splits_in_use(
        sets, lambda s: len(s.seqs), "phrases", "early stopping and model choice"
    )
    if len(set(test.piece_labels)) < 2:
        raise NothingToLearn(f"the {eval_split} split holds one class: no classification to score")
    weights = class_weights(train.labels, len(classes))
    torch.manual_seed(tp.seed)
    model = _build_encoder(p, vocab, len(classes))
    log.info(
        "phrase classifier: %d parameters, %d classes %s, phrases train %d / valid %d / test %d",
        model.n_params(),
        len(classes),
        classes,
        len(train.seqs),
        len(valid.seqs),
        len(test.seqs),
    )

    def loss(m: Encoder, batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(m.parameters()).device
        ids, y = batch[0].to(device), batch[1].to(device)
        value = F.cross_entropy(m(ids).float(), y, weight=weights.to(device))
        return value, {"loss": value.item()}

    def evaluate(m: Encoder) -> dict[str, float]:
        probs = phrase_probs(m, valid.seqs, p.eval_batch_size)
        y = np.asarray(valid.labels)
        got = single_label_metrics(y, probs, classes)
        nll = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-9)).mean())
        return {
            "valid_loss": nll,
            "valid_accuracy": got["accuracy"],
            "valid_macro_f1": got["macro_f1"],
        }

    job = Fit(
        model=model,
        train_batches=lambda epoch, rng: phrase_batches(
            train, vocab, tp.batch_size, p.transpose, rng
        ),
        steps_per_epoch=-(-len(train.seqs) // tp.batch_size),
        loss=loss,
        evaluate=timed(evaluate),
        best_key="valid_macro_f1",
        best_mode="max",
    )
    if p.budget_s:
        tp = dataclasses.replace(tp, epochs=epochs_for_budget(job, p.budget_s, tp.epochs))
    stop = EarlyStop(job, p.patience, p.budget_s)
    meta = {
        "kind": "phrase",
        "label": p.label,
        "classes": classes,
        "bars_per_phrase": p.bars_per_phrase,
        "max_len": p.max_len,
        "vocab_size": vocab.size,
        "vocab_sha": vocab.sha,
    }

    def save_best(m: Encoder) -> None:
        save_encoder(m, out_dir, meta)
        shutil.copyfile(tokenizer_json, Path(out_dir) / TOKENIZER_FILE)

    fit(
        job,
        tp,
        resume_dir,
        save_best=save_best,
        fingerprint={
            "genre": dataclasses.asdict(p),
            "phrases": len(train.seqs),
            "classes": classes,
        },
    )
    history = stop.finish()
    model.eval()

    probs = phrase_probs(model, test.seqs, p.eval_batch_size)
    y = np.asarray(test.labels)
    piece_probs = pool_pieces(probs, test)
    piece_y = np.asarray(test.piece_labels)
    songs = [rows[pid]["song_id"] for pid in test.piece_ids]
    song_keys, song_probs = pool_mean(songs, piece_probs)
    song_y = np.array([piece_y[songs.index(k)] for k in song_keys])
    n_all = len(train.seqs) + len(valid.seqs) + len(test.seqs)
    truncated = train.truncated + sets["valid"].truncated + sets["test"].truncated
    best = max(history, key=lambda h: h["valid_macro_f1"])
    train_s = train_seconds(history)
    metrics: dict[str, Any] = {
        "label": p.label,
        "label_rule": choice.rule,
        "classes": ",".join(classes),
        "n_classes": len(classes),
        "eval_split": eval_split,
        **single_label_metrics(y, probs, classes),
        **single_label_metrics(piece_y, piece_probs, classes, "piece_"),
        **single_label_metrics(song_y, song_probs, classes, "song_"),
        "phrases_train": len(train.seqs),
        "phrases_valid": len(sets["valid"].seqs),
        "phrases_test": len(test.seqs),
        "truncated_phrases": truncated,
        "truncation_rate": truncated / max(1, n_all),
        "pieces_train": len(train.piece_ids),
        "pieces_test": len(test.piece_ids),
        "pieces_unlabelled": 0,
        "pieces_too_short": 0,
        "pieces_rare_label": 0,
        **counts,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "best_valid_macro_f1": best["valid_macro_f1"],
        "params": model.n_params(),
        "budget_s": p.budget_s,
        "epochs_planned": tp.epochs,
        "train_phrases_per_s": round(len(train.seqs) * len(history) / train_s, 1)
        if train_s > 0
        else 0.0,
        "device": str(resolve_device(tp.device)),
    }
    inputs = baselines.inputs(
        [train.piece_ids, test.piece_ids, valid.piece_ids],
        baselines.corpus_music(corpus_dir, manifest),
        latents_dir,
    )
    majority = np.bincount(train.piece_labels, minlength=len(classes)).argmax()
    metrics["majority_baseline_piece_accuracy"] = float((piece_y == majority).mean())
    metrics.update(
        baselines.single_label_scores(
            inputs, np.asarray(train.piece_labels), np.asarray(test.piece_labels), classes, tp.seed
        )
    )
    if "handcrafted" in inputs.x:
        metrics.update(
            serve(model, p, inputs.x["handcrafted"], train, valid, test, classes, out_dir, tp.seed)
        )
    return PhraseResult(
        job,
        metrics,
        classes,
        y,
        probs.argmax(1),
        song_y,
        song_probs.argmax(1),
        test.piece_ids,
        piece_probs,
    )
