"""Does generated music depend on its label? Three checks from the users' MIDI-VAE plan,
usable for any generator that yields REMI ids per label (the VAE, the GPT).

- Conditioning accuracy: a GRU over REMI tokens, trained on real train-split excerpts of the
  evaluated composers (model selection on valid-split excerpts), labels each generated
  piece; the share given the composer it was generated for is compared with chance
  (1 / composers). Its accuracy on real test excerpts says how much that figure can mean.
- Relative cosine similarity, in the music-feature space of `music_metrics.FEATURES` (the
  six MusPy metrics, note density, pitch mean/spread, velocity, pitch-class and duration
  histograms), z-scored on the real excerpts: per generated piece, the mean cosine
  similarity to real excerpts of its own composer minus that to the other composers';
  averaged. The same figure for real test excerpts against the train ones is the ceiling
  a perfectly conditioned generator would reach.
- Latent space: the silhouette of embeddings (the VAE's posterior means of test windows)
  grouped by label, and a 2-D PCA plot coloured by label.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from midipipe.core.io import atomic_path
from midipipe.core.params import TrainParams
from midipipe.evaluation import generated as ev
from midipipe.evaluation.confusion import write_confusion
from midipipe.training.fit import Fit, fit

log = logging.getLogger(__name__)

FEATURE_SPACE = "music_metrics.FEATURES, z-scored on the real excerpts"


# -- the GRU composer classifier -------------------------------------------------------------


@dataclass
class GRUParams:
    """The classifier of the conditioning check (the plan's GRU)."""

    embed: int = 64
    hidden: int = 96
    dropout: float = 0.1


class GRUClassifier(nn.Module):
    """Token embeddings -> one GRU layer -> the last hidden state -> composer logits."""

    def __init__(self, vocab_size: int, n_classes: int, p: GRUParams, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, p.embed, padding_idx=pad_id)
        self.gru = nn.GRU(p.embed, p.hidden, batch_first=True)
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(p.hidden, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != self.pad_id).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.drop(self.embed(ids)), lengths, batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)
        return self.head(self.drop(h[-1]))


def _pad(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """[B, longest] ids; an empty sequence becomes one PAD (the GRU needs a step)."""
    ids = torch.full((len(seqs), max([1, *map(len, seqs)])), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return ids


@torch.no_grad()
def predict(model: GRUClassifier, pieces: Sequence[ev.Piece], batch_size: int = 64) -> np.ndarray:
    """Class indices (positions in the classifier's composer list) of token sequences."""
    model.eval()
    device = next(model.parameters()).device
    out = [np.zeros(0, dtype=int)]
    for i in range(0, len(pieces), batch_size):
        ids = _pad([p.ids for p in pieces[i : i + batch_size]], model.pad_id)
        out.append(model(ids.to(device)).argmax(-1).cpu().numpy())
    return np.concatenate(out)


def train_classifier(
    vocab_size: int,
    pad_id: int,
    composer_ids: Sequence[int],
    train: Sequence[ev.Piece],
    valid: Sequence[ev.Piece],
    p: GRUParams,
    tp: TrainParams,
) -> GRUClassifier:
    """The GRU, trained with the shared loop on class-balanced cross-entropy; the epoch with
    the best valid accuracy (balanced over composers) is kept."""
    classes = {cid: i for i, cid in enumerate(composer_ids)}
    counts = np.bincount([classes[x.composer_id] for x in train], minlength=len(classes))
    weight = torch.tensor(len(train) / (len(classes) * np.maximum(counts, 1)), dtype=torch.float)
    torch.manual_seed(tp.seed)
    model = GRUClassifier(vocab_size, len(classes), p, pad_id)

    def batches(epoch: int, rng: torch.Generator):
        del epoch
        order = torch.randperm(len(train), generator=rng).tolist()
        for i in range(0, len(order), tp.batch_size):
            chosen = [train[j] for j in order[i : i + tp.batch_size]]
            yield {
                "ids": _pad([p.ids for p in chosen], pad_id),
                "y": torch.tensor([classes[p.composer_id] for p in chosen]),
            }

    def loss(m: GRUClassifier, batch: dict):
        device = next(m.parameters()).device
        logits = m(batch["ids"].to(device))
        value = F.cross_entropy(logits.float(), batch["y"].to(device), weight=weight.to(device))
        return value, {"ce": value.item()}

    def evaluate(m: GRUClassifier) -> dict[str, float]:
        if not valid:
            return {"valid_balanced_acc": 0.0}
        true = np.array([classes[x.composer_id] for x in valid])
        pred = predict(m, valid)
        recalls = [np.mean(pred[true == c] == c) for c in np.unique(true)]
        return {"valid_balanced_acc": float(np.mean(recalls))}

    job = Fit(
        model=model,
        train_batches=batches,
        steps_per_epoch=-(-len(train) // tp.batch_size),
        loss=loss,
        evaluate=evaluate,
        best_key="valid_balanced_acc",
        best_mode="max",
    )
    with tempfile.TemporaryDirectory(prefix="gru-") as resume:
        fit(job, tp, resume, save_best=lambda m: None)
    return model.eval()


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
    real_valid: Sequence[ev.Piece],
    real_test: Sequence[ev.Piece],
    composers: Sequence[tuple[str, int]],
    gru: GRUParams,
    tp: TrainParams,
    confusion_png=None,
    classifier: GRUClassifier | None = None,
) -> tuple[dict, GRUClassifier | None]:
    """Conditioning accuracy (GRU) and relative cosine similarity of `generated` pieces
    against real excerpts of the same `composers` (name, id); flat metrics, null where a
    figure is undefined (`note` says why), and the classifier (pass it back in to score
    other generated sets against the same judge)."""
    ids = [cid for _, cid in composers]
    pick = {
        name: [p for p in pieces if p.composer_id in ids]
        for name, pieces in (("train", real_train), ("valid", real_valid), ("test", real_test))
    }
    chance = 1.0 / max(1, len(ids))
    out: dict = {
        "composers_evaluated": len(ids),
        "chance": chance,
        "generated_pieces": len(generated),
        "feature_space": FEATURE_SPACE,
    }
    if len(ids) < 2 or len({p.composer_id for p in pick["train"]}) < 2:
        out["note"] = "fewer than 2 composers with real train excerpts: no conditioning figures"
        if confusion_png is not None:
            ev.plot_message(confusion_png, out["note"])
        return out, classifier
    if classifier is None:
        classifier = train_classifier(
            len(tokenizer.vocab), tokenizer.pad_token_id, ids, pick["train"], pick["valid"], gru, tp
        )
    panels = []
    for title, group, key in (
        ("generated pieces", list(generated), "cond_acc"),
        ("real test excerpts", pick["test"], "classifier_real_test_acc"),
    ):
        true = [ids.index(p.composer_id) for p in group]
        pred = predict(classifier, group).tolist()
        hits = int(np.sum(np.equal(true, pred)))
        out[key] = hits / len(group) if group else None
        out.update({f"{key}_{k}": v for k, v in ev.versus_chance(hits, len(group), chance).items()})
        acc = "n/a" if out[key] is None else f"{out[key]:.3f}"
        panels.append((f"GRU on {title} (acc {acc})", true, pred))
    out["classifier_real_test_excerpts"] = len(pick["test"])
    log.info(
        "GRU judge: accuracy %s on real test excerpts, %s on generated pieces (chance %.3f)",
        out["classifier_real_test_acc"],
        out["cond_acc"],
        chance,
    )
    if generated:
        out["cond_acc_minus_chance"] = out["cond_acc"] - chance
    if confusion_png is not None:
        names = [name for name, _ in composers]
        write_confusion(names, panels, Path(confusion_png).with_suffix(".csv"), confusion_png)

    _, train_x, _ = ev.describe(tokenizer, pick["train"])
    train_y = [p.composer_id for p in pick["train"]]
    _, gen_x, _ = ev.describe(tokenizer, generated)
    _, test_x, _ = ev.describe(tokenizer, pick["test"])
    out["relative_cosine"] = relative_cosine(
        gen_x, [p.composer_id for p in generated], train_x, train_y
    )
    out["relative_cosine_real_test"] = relative_cosine(
        test_x, [p.composer_id for p in pick["test"]], train_x, train_y
    )
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
    }, classifier
