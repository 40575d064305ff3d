"""Training glue and metrics for the two genre models (stages 05 and 06).

Phrase classifier (stage 05, the XMIDI plan): every labelled piece is cut into [CLS] phrases of
`bars_per_phrase` bars; an encoder learns the piece's label from each phrase alone, with
class-weighted cross-entropy (weights from the train split's phrase counts) and random pitch
transposition. Pieces are reported by the mean of their phrases' probabilities, and songs by
the mean over their pieces. Splits come from the manifest, which groups them by song.

Hierarchical model (stage 06, the MidiCaps plan): every piece's non-empty bars are cut into
chunks, a frozen LM embeds each chunk once, and an attention-pooling head learns the piece's
tags (multi-hot, BCE). The decision threshold is tuned on the valid split.

`fit` has no early stopping, so `EarlyStop` wraps a job's batches and evaluation: once the
best key has not improved for `patience` epochs, the remaining epochs are empty (no batches,
last metrics again) and their rows are dropped from the history.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import precision_recall_fscore_support

from midipipe import remi
from midipipe.genre import baselines
from midipipe.genre.phrases import Vocab, chunks, pad_batch, phrases, random_transpose
from midipipe.models.encoder import Encoder, EncoderConfig, save_encoder
from midipipe.models.hier import FrozenLM, HierClassifier, HierConfig, save_hier, weights_sha256
from midipipe.params import ParamError, TrainParams
from midipipe.shards import atomic_path, tokens_by_split, write_json
from midipipe.training import Fit, fit, resolve_device

log = logging.getLogger(__name__)

LABELS = ("period", "genre", "source", "composer")  # manifest columns a phrase label can be
SIZES = ("cpu_default", "gpu_profile")
TOKENIZER_FILE = "tokenizer.json"
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


# -- params ----------------------------------------------------------------------------------


@dataclass
class GenreParams:
    """params.yaml `genre:` (stage 05, phrase classifier)."""

    label: str = "period"  # period | genre (first of `genres`) | source | composer
    bars_per_phrase: int = 4
    max_len: int = 512  # tokens per phrase, [CLS] included; longer phrases are cut (counted)
    max_phrases_per_piece: int = 8  # spread over the piece (0 = all): long pieces don't rule
    min_class_pieces: int = 5  # a label with fewer train pieces is dropped (counted)
    transpose: int = 6  # random shift of Pitch tokens by up to this many semitones (0 = off)
    patience: int = 3  # epochs without a better valid macro-F1 before stopping (0 = never)
    size: str = "cpu_default"  # EncoderConfig profile: cpu_default | gpu_profile
    model: dict[str, Any] = field(default_factory=dict)  # EncoderConfig overrides (n_layer...)
    eval_batch_size: int = 64
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.label in LABELS, "label", f"one of {', '.join(LABELS)}"),
            (self.bars_per_phrase >= 1, "bars_per_phrase", ">= 1"),
            (self.max_len >= 8, "max_len", ">= 8"),
            (self.max_phrases_per_piece >= 0, "max_phrases_per_piece", ">= 0 (0 = all)"),
            (self.min_class_pieces >= 1, "min_class_pieces", ">= 1"),
            (0 <= self.transpose <= 24, "transpose", "in [0, 24]"),
            (self.patience >= 0, "patience", ">= 0 (0 = never stop early)"),
            (self.size in SIZES, "size", f"one of {', '.join(SIZES)}"),
            (self.eval_batch_size >= 1, "eval_batch_size", ">= 1"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ParamError(f"genre.{key}: must be {want}, got {getattr(self, key)!r}")
        names = {f.name for f in dataclasses.fields(EncoderConfig)}
        for key in self.model:
            if key not in names or key in ("vocab_size", "n_classes", "pad_id", "max_len"):
                raise ParamError(f"genre.model.{key}: not an EncoderConfig override")


@dataclass
class GenreHierParams:
    """params.yaml `genre_hier:` (stage 06, hierarchical multi-label)."""

    lm_path: str | None = None  # a Hugging Face GPT-2 folder; null: the project's generator
    bars_per_chunk: int = 8
    max_chunks: int = 8  # per piece, spread over it (0 = all): bounds the LM embedding cost
    max_tokens: int = 0  # per chunk; longer ones are cut (counted). 0: the LM's context
    min_tag_pieces: int = 5  # a tag on fewer train pieces is dropped
    d_attn: int = 128
    dropout: float = 0.1
    patience: int = 5  # epochs without a lower valid loss before stopping (0 = never)
    embed_batch: int = 16  # chunks per LM forward pass
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.bars_per_chunk >= 1, "bars_per_chunk", ">= 1"),
            (self.max_chunks >= 0, "max_chunks", ">= 0 (0 = all)"),
            (self.max_tokens >= 0, "max_tokens", ">= 0 (0 = the LM's context)"),
            (self.min_tag_pieces >= 1, "min_tag_pieces", ">= 1"),
            (self.d_attn >= 1, "d_attn", ">= 1"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            (self.patience >= 0, "patience", ">= 0"),
            (self.embed_batch >= 1, "embed_batch", ">= 1"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ParamError(f"genre_hier.{key}: must be {want}, got {getattr(self, key)!r}")


# -- labels ----------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict[str, dict]:
    cols = ["piece_id", "source", "path", "song_id", "split", "composer", "genres", "period"]
    return {r["piece_id"]: r for r in pq.read_table(path, columns=cols).to_pylist()}


def label_of(row: dict, label: str) -> str | None:
    """A piece's single label: a manifest column, or the first of its `genres`."""
    if label == "genre":
        return (row.get("genres") or [None])[0]
    return row.get(label) or None


# -- metrics ---------------------------------------------------------------------------------


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


def write_confusion(
    classes: Sequence[str],
    panels: list[tuple[str, np.ndarray, np.ndarray]],
    csv_path: str | Path,
    png_path: str | Path,
) -> None:
    """The first panel's (actual, predicted) pairs as CSV for `dvc plots` (confusion
    template), and every panel as a row-normalised matrix with counts in a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, y0, p0 = panels[0]
    with atomic_path(csv_path) as tmp:
        tmp.write_text(
            "actual,predicted\n"
            + "".join(f"{classes[a]},{classes[b]}\n" for a, b in zip(y0, p0, strict=True))
        )
    size = 1.5 + 0.5 * len(classes)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(size * len(panels) + 1, size + 0.8), squeeze=False
    )
    for ax, (title, y, pred) in zip(axes[0], panels, strict=True):
        m = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(m, (np.asarray(y, dtype=int), np.asarray(pred, dtype=int)), 1)
        ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# -- early stopping --------------------------------------------------------------------------


class EarlyStop:
    """Stops `job` once its best key has not improved for `patience` epochs (see module doc).

    Its state is the job's history, which `fit` restores on resume, so a resumed run stops
    where an uninterrupted one would.
    """

    def __init__(self, job: Fit, patience: int) -> None:
        self.job, self.patience = job, patience
        self._batches, self._evaluate = job.train_batches, job.evaluate
        job.train_batches, job.evaluate = self.batches, self.evaluate

    def rows(self) -> list[dict]:
        return [h for h in self.job.history if not h.get("early_stopped")]

    def stopped(self) -> bool:
        rows = self.rows()
        if not self.patience or not rows:
            return False
        values = np.array([h[self.job.best_key] for h in rows])
        best = int(values.argmax() if self.job.best_mode == "max" else values.argmin())
        return len(rows) - 1 - best >= self.patience

    def batches(self, epoch: int, rng: torch.Generator):
        return iter(()) if self.stopped() else self._batches(epoch, rng)

    def evaluate(self, model) -> dict[str, float]:
        if self.stopped():
            last = self.rows()[-1]
            return {k: last[k] for k in last if k.startswith("valid")} | {"early_stopped": 1.0}
        return {**self._evaluate(model), "early_stopped": 0.0}

    def finish(self) -> list[dict]:
        """The history without the empty epochs; logs where training stopped."""
        self.job.history = self.rows()
        if len(self.job.history) and self.stopped():
            log.info("stopped early after epoch %d", self.job.history[-1]["epoch"])
        return self.job.history


def _timed(evaluate: Callable) -> Callable:
    def run(model) -> dict[str, float]:
        t0 = time.perf_counter()
        return {**evaluate(model), "valid_s": round(time.perf_counter() - t0, 3)}

    return run


def _train_seconds(history: list[dict]) -> float:
    return sum(h["epoch_s"] - h.get("valid_s", 0.0) for h in history)


# -- stage 05: phrase classifier -------------------------------------------------------------


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
    rows: dict[str, list[tuple]], labels: dict[str, str | None], vocab: Vocab, p: GenreParams
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
            c = phrases(ids, bars, vocab, p.bars_per_phrase, p.max_len, p.max_phrases_per_piece)
            if not c.seqs:
                counts["pieces_too_short"] += 1
                continue
            cut.setdefault(split, []).append((pid, name, c))
    per_class = Counter(name for _, name, _ in cut.get("train", []))
    classes = sorted(n for n, k in per_class.items() if k >= p.min_class_pieces)
    if len(classes) < 2:
        raise ParamError(
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
    cfg = getattr(EncoderConfig, p.size)(
        **{
            **p.model,
            "vocab_size": vocab.size,
            "n_classes": n_classes,
            "pad_id": vocab.pad_id,
            "max_len": p.max_len,
        }
    )
    return Encoder(cfg)


def train_phrase(
    p: GenreParams,
    tp: TrainParams,
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    out_dir: str | Path = "models/genre_phrase",
    resume_dir: str | Path = "checkpoints/genre_phrase",
    midi_dir: str | Path | None = "data/midi",
    latents_dir: str | Path | None = "data/latents",
) -> PhraseResult:
    """Train, keep the best epoch (valid macro-F1) in `out_dir`, evaluate on test, and run
    the baselines on the same test pieces."""
    tokenizer_json = Path(tokens_dir) / TOKENIZER_FILE
    vocab = Vocab.of(remi.load_tokenizer(tokenizer_json))
    rows = read_manifest(manifest)
    labels = {pid: label_of(r, p.label) for pid, r in rows.items()}
    classes, sets, counts = phrase_sets(tokens_by_split(tokens_dir, manifest), labels, vocab, p)
    train, valid, test = sets["train"], sets["valid"], sets["test"]
    if not valid.seqs:
        log.warning("no valid phrases: early stopping and model choice use the train split")
        valid = train
    eval_split = "test"
    if not test.seqs:
        log.warning("no test phrases: reporting on the valid split")
        test, eval_split = valid, "valid"
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
        evaluate=_timed(evaluate),
        best_key="valid_macro_f1",
        best_mode="max",
    )
    stop = EarlyStop(job, p.patience)
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
    piece_probs = np.stack(
        [probs[np.asarray(test.piece) == k].mean(0) for k in range(len(test.piece_ids))]
    )
    piece_y = np.asarray(test.piece_labels)
    songs = [rows[pid]["song_id"] for pid in test.piece_ids]
    song_keys, song_probs = pool_mean(songs, piece_probs)
    song_y = np.array([piece_y[songs.index(k)] for k in song_keys])
    n_all = len(train.seqs) + len(valid.seqs) + len(test.seqs)
    truncated = train.truncated + sets["valid"].truncated + sets["test"].truncated
    best = max(history, key=lambda h: h["valid_macro_f1"])
    train_s = _train_seconds(history)
    metrics: dict[str, Any] = {
        "label": p.label,
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
        "size": p.size,
        "train_phrases_per_s": round(len(train.seqs) * len(history) / train_s, 1)
        if train_s > 0
        else 0.0,
        "device": str(resolve_device(tp.device)),
    }
    metrics.update(_single_baselines(rows, train, test, classes, midi_dir, latents_dir, tp.seed))
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


def _single_baselines(
    rows: dict[str, dict],
    train: PhraseSet,
    test: PhraseSet,
    classes: list[str],
    midi_dir,
    latents_dir,
    seed: int,
) -> dict[str, Any]:
    """Piece-level accuracy / macro-F1 of the baselines on the phrase model's test pieces."""
    out: dict[str, Any] = {}
    y_tr, y_te = np.asarray(train.piece_labels), np.asarray(test.piece_labels)
    inputs = {}
    if midi_dir is not None:
        inputs["metadata"] = [
            baselines.metadata_matrix([Path(midi_dir) / rows[pid]["path"] for pid in s.piece_ids])
            for s in (train, test)
        ]
    if latents_dir is not None:
        x = [baselines.mean_latents(latents_dir, s.piece_ids) for s in (train, test)]
        if x[0] is not None and x[1] is not None:
            inputs["latent"] = x
    for name, (x_tr, x_te) in inputs.items():
        probs = baselines.single_label(x_tr, y_tr, x_te, len(classes), seed)
        got = single_label_metrics(y_te, probs, classes)
        out[f"{name}_baseline_piece_accuracy"] = got.get("accuracy", 0.0)
        out[f"{name}_baseline_piece_macro_f1"] = got.get("macro_f1", 0.0)
    out["latent_baseline"] = "done" if "latent" in inputs else "no latents for these pieces"
    return out


# -- stage 06: hierarchical multi-label ------------------------------------------------------


@dataclass
class ChunkSet:
    """Per piece: its chunk embeddings [n_chunks, D] and multi-hot tags."""

    piece_ids: list[str] = field(default_factory=list)
    x: list[np.ndarray] = field(default_factory=list)
    y: np.ndarray | None = None
    n_chunks: int = 0
    truncated: int = 0


def resolve_lm(hp: GenreHierParams, default: str | Path = "models/generator") -> Path | None:
    """`lm_path` when set (it must exist), else the project's generator when trained."""
    if hp.lm_path:
        path = Path(hp.lm_path).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"genre_hier.lm_path: no config.json in {path}")
        return path
    return Path(default) if (Path(default) / "config.json").exists() else None


def embed_pieces(
    lm: FrozenLM, items: list[tuple], vocab: Vocab, hp: GenreHierParams, max_tokens: int
) -> tuple[list[str], list[np.ndarray], int, int]:
    """(piece ids, per-piece chunk embeddings, chunks, truncated chunks); pieces without a
    non-empty bar are left out."""
    cuts = [
        (pid, chunks(ids, bars, vocab, hp.bars_per_chunk, max_tokens, hp.max_chunks))
        for pid, ids, bars in items
    ]
    cuts = [(pid, c) for pid, c in cuts if c.seqs]
    flat = [s for _, c in cuts for s in c.seqs]
    emb = lm.embed(flat, hp.embed_batch) if flat else np.zeros((0, lm.d_model), np.float32)
    bounds = np.cumsum([0] + [len(c.seqs) for _, c in cuts])
    return (
        [pid for pid, _ in cuts],
        [emb[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        len(flat),
        sum(c.truncated for _, c in cuts),
    )


def chunk_batch(xs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, most chunks, D] zero-padded, and the mask of real chunks."""
    n = max(len(x) for x in xs)
    out = torch.zeros(len(xs), n, xs[0].shape[1])
    mask = torch.zeros(len(xs), n, dtype=torch.bool)
    for i, x in enumerate(xs):
        out[i, : len(x)] = torch.from_numpy(x)
        mask[i, : len(x)] = True
    return out, mask


@torch.inference_mode()
def hier_probs(model: HierClassifier, xs: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    device = next(model.parameters()).device
    out = np.zeros((len(xs), model.config.n_labels), dtype=np.float32)
    for lo in range(0, len(xs), batch_size):
        x, mask = chunk_batch(xs[lo : lo + batch_size])
        out[lo : lo + len(x)] = (
            torch.sigmoid(model(x.to(device), mask.to(device)).float()).cpu().numpy()
        )
    return out


@dataclass
class HierResult:
    job: Fit | None
    metrics: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    test_y: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    piece_ids: list[str] = field(default_factory=list)


def skipped(out_dir: str | Path, reason: str) -> HierResult:
    """No LM to embed with: say so in the model folder and the metrics."""
    write_json(Path(out_dir) / "config.json", {"status": "skipped", "reason": reason})
    log.warning("genre_hier skipped: %s", reason)
    return HierResult(None, {"status": "skipped", "reason": reason})


def train_hier(
    hp: GenreHierParams,
    tp: TrainParams,
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    out_dir: str | Path = "models/genre_hier",
    resume_dir: str | Path = "checkpoints/genre_hier",
    lm_dir: str | Path | None = None,
    tags: dict[str, list[str]] | None = None,
    midi_dir: str | Path | None = "data/midi",
    latents_dir: str | Path | None = "data/latents",
) -> HierResult:
    """Embed chunks with the frozen LM in `lm_dir`, train the pooling head on multi-hot tags
    (the manifest's `genres`, unless `tags` is given), tune the threshold on valid and report
    on test beside the baselines."""
    if lm_dir is None:
        return skipped(
            out_dir, "no LM: models/generator is not trained and genre_hier.lm_path is not set"
        )
    tokenizer_json = Path(tokens_dir) / TOKENIZER_FILE
    tokenizer = remi.load_tokenizer(tokenizer_json)
    vocab = Vocab.of(tokenizer)
    device = resolve_device(tp.device)
    lm = FrozenLM(lm_dir, tokenizer, device)
    max_tokens = min(hp.max_tokens or lm.context, lm.context)
    rows = read_manifest(manifest)
    tags = tags if tags is not None else {pid: list(r["genres"] or []) for pid, r in rows.items()}
    by_split = tokens_by_split(tokens_dir, manifest)

    t0 = time.perf_counter()
    sets: dict[str, ChunkSet] = {}
    for split, items in by_split.items():
        items = [it for it in items if tags.get(it[0])]
        ids, xs, n, trunc = embed_pieces(lm, items, vocab, hp, max_tokens)
        sets[split] = ChunkSet(ids, xs, None, n, trunc)
    embed_s = time.perf_counter() - t0
    per_tag = Counter(t for pid in sets["train"].piece_ids for t in set(tags[pid]))
    names = sorted(t for t, k in per_tag.items() if k >= hp.min_tag_pieces)
    if len(names) < 2:
        return skipped(
            out_dir,
            f"fewer than 2 tags on >= genre_hier.min_tag_pieces="
            f"{hp.min_tag_pieces} train pieces: {dict(per_tag)}",
        )
    col = {t: k for k, t in enumerate(names)}
    dropped = 0
    for s in sets.values():
        y = np.zeros((len(s.piece_ids), len(names)), dtype=bool)
        for i, pid in enumerate(s.piece_ids):
            for t in tags[pid]:
                if t in col:
                    y[i, col[t]] = True
        keep = y.any(1)
        dropped += int((~keep).sum())
        s.piece_ids = [pid for pid, k in zip(s.piece_ids, keep, strict=True) if k]
        s.x = [x for x, k in zip(s.x, keep, strict=True) if k]
        s.y = y[keep]
    train, valid, test = sets["train"], sets["valid"], sets["test"]
    if not valid.piece_ids:
        log.warning("no valid pieces: model choice and threshold use the train split")
        valid = train
    eval_split = "test"
    if not test.piece_ids:
        log.warning("no test pieces: reporting on the valid split")
        test, eval_split = valid, "valid"

    torch.manual_seed(tp.seed)
    model = HierClassifier(
        HierConfig(d_in=lm.d_model, n_labels=len(names), d_attn=hp.d_attn, dropout=hp.dropout)
    )

    def batches(epoch: int, rng: torch.Generator):
        order = torch.randperm(len(train.x), generator=rng).tolist()
        for lo in range(0, len(order), tp.batch_size):
            idx = order[lo : lo + tp.batch_size]
            x, mask = chunk_batch([train.x[i] for i in idx])
            yield x, mask, torch.from_numpy(train.y[idx].astype(np.float32))

    def loss(m: HierClassifier, batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(m.parameters()).device
        x, mask, y = (b.to(device) for b in batch)
        value = F.binary_cross_entropy_with_logits(m(x, mask).float(), y)
        return value, {"loss": value.item()}

    def evaluate(m: HierClassifier) -> dict[str, float]:
        probs = hier_probs(m, valid.x)
        bce = F.binary_cross_entropy(
            torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7),
            torch.from_numpy(valid.y.astype(np.float32)),
        )
        got = multilabel_metrics(valid.y, probs, 0.5)
        return {
            "valid_loss": float(bce),
            "valid_micro_f1": got["micro_f1"],
            "valid_macro_f1": got["macro_f1"],
        }

    job = Fit(
        model=model,
        train_batches=batches,
        steps_per_epoch=-(-len(train.x) // tp.batch_size),
        loss=loss,
        evaluate=_timed(evaluate),
        best_key="valid_loss",
        best_mode="min",
    )
    stop = EarlyStop(job, hp.patience)
    log.info(
        "hierarchical model: LM %s (%s, d=%d), %d tags, pieces train %d / valid %d / "
        "test %d, %d chunks embedded in %.1f s",
        lm_dir,
        lm.kind,
        lm.d_model,
        len(names),
        len(train.x),
        len(valid.x),
        len(test.x),
        sum(s.n_chunks for s in sets.values()),
        embed_s,
    )
    fit(
        job,
        tp,
        resume_dir,
        save_best=lambda m: None,
        fingerprint={
            "genre_hier": dataclasses.asdict(hp),
            "pieces": len(train.x),
            "tags": names,
            "lm": str(lm_dir),
        },
    )
    history = stop.finish()
    model.eval()
    threshold = tune_threshold(valid.y, hier_probs(model, valid.x))
    meta = {
        "kind": "hier",
        "tags": names,
        "threshold": threshold,
        "bars_per_chunk": hp.bars_per_chunk,
        "max_chunks": hp.max_chunks,
        "max_tokens": max_tokens,
        "vocab_size": vocab.size,
        "vocab_sha": vocab.sha,
        "lm": {"path": str(lm_dir), "kind": lm.kind, "sha256": weights_sha256(lm_dir)},
    }
    save_hier(model, out_dir, meta)
    shutil.copyfile(tokenizer_json, Path(out_dir) / TOKENIZER_FILE)

    probs = hier_probs(model, test.x)
    n_chunks = sum(s.n_chunks for s in sets.values())
    n_trunc = sum(s.truncated for s in sets.values())
    best = min(history, key=lambda h: h["valid_loss"])
    metrics: dict[str, Any] = {
        "status": "trained",
        "lm": str(lm_dir),
        "lm_kind": lm.kind,
        "tags": ",".join(names),
        "n_tags": len(names),
        "eval_split": eval_split,
        "threshold": threshold,
        **multilabel_metrics(test.y, probs, threshold),
        "pieces_train": len(train.x),
        "pieces_valid": len(sets["valid"].x),
        "pieces_test": len(test.x),
        "pieces_without_kept_tag": dropped,
        "chunks": n_chunks,
        "truncated_chunks": n_trunc,
        "truncation_rate": n_trunc / max(1, n_chunks),
        "embed_s": round(embed_s, 2),
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "best_valid_loss": best["valid_loss"],
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
    }
    metrics.update(_multi_baselines(rows, train, valid, test, midi_dir, latents_dir, tp.seed))
    return HierResult(job, metrics, names, test.y, probs, test.piece_ids)


def _multi_baselines(
    rows, train: ChunkSet, valid: ChunkSet, test: ChunkSet, midi_dir, latents_dir, seed: int
) -> dict[str, Any]:
    """Baselines' micro / macro F1 and test_acc on the same pieces, threshold tuned on valid."""
    out: dict[str, Any] = {}
    sets = (train, valid, test)
    inputs = {}
    if midi_dir is not None:
        inputs["metadata"] = [
            baselines.metadata_matrix([Path(midi_dir) / rows[pid]["path"] for pid in s.piece_ids])
            for s in sets
        ]
    if latents_dir is not None:
        x = [baselines.mean_latents(latents_dir, s.piece_ids) for s in sets]
        if all(v is not None for v in x):
            inputs["latent"] = x
    for name, (x_tr, x_va, x_te) in inputs.items():
        p_va, p_te = baselines.multi_label(x_tr, train.y, x_va, x_te, seed=seed)
        got = multilabel_metrics(test.y, p_te, tune_threshold(valid.y, p_va))
        for key in ("micro_f1", "macro_f1", "test_acc"):
            out[f"{name}_baseline_{key}"] = got.get(key, 0.0)
    out["latent_baseline"] = "done" if "latent" in inputs else "no latents for these pieces"
    return out
