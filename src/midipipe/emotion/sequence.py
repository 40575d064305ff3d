"""The quadrant ensemble's sequence member: the genre phrase classifier's encoder
(`genre.encoder`) read over a clip's REMI tokens, cut into `bars_per_phrase`-bar [CLS]
phrases (`genre.phrases`), trained on the clip's quadrant with class-weighted cross-entropy and
random transposition (it keeps the mode, so the quadrant), a clip scored by the mean of its
phrases' probabilities. It sees what the per-bar head cannot: note order, rhythm and voicing
inside the bar (the EMOPIA paper's best symbolic model is a sequence model on MIDI events).

Saved beside the other heads as `sequence/` (the encoder's own folder format).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from midipipe.core.device import seed_everything
from midipipe.genre.encoder import Encoder, EncoderConfig, load_encoder, save_encoder
from midipipe.genre.phrase_train import PhraseSet, class_weights, phrase_batches, phrase_probs
from midipipe.genre.phrases import Vocab, phrases
from midipipe.tokens.dataset import split_rows

log = logging.getLogger(__name__)


@dataclass
class SequenceParams:
    """`emotion.quadrant.sequence`: the REMI phrase encoder beside the per-bar head."""

    enabled: bool = False  # off: the ensemble is the per-bar heads and the hand-crafted model
    bars_per_phrase: int = 4
    max_len: int = 384  # tokens per phrase, [CLS] included (EMOPIA: ~62 a bar, median)
    epochs: int = 12
    batch_size: int = 32  # phrases per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    transpose: int = 5  # largest random shift in semitones (0: none)
    budget_s: float = 0.0  # > 0: stop one fit at the first epoch past this many seconds
    d_model: int = 64  # genre.encoder's cpu_default shape (2 layers, 4 heads, FF 4 x d_model)
    n_layer: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.bars_per_phrase < 1 or self.max_len < 8 or self.epochs < 1:
            raise ValueError(
                "emotion.quadrant.sequence needs bars_per_phrase >= 1, max_len >= 8 and "
                f"epochs >= 1, got {self.bars_per_phrase}, {self.max_len}, {self.epochs}"
            )


def clip_phrases(
    tokens_dir: str | Path, manifest: str | Path, piece_ids: list[str], vocab: Vocab, p
) -> list[list[np.ndarray]]:
    """Every phrase of each piece in `piece_ids` (aligned; [] for a piece without REMI tokens
    or a whole phrase), read split by split from the token shards."""
    where = {pid: k for k, pid in enumerate(piece_ids)}
    out: list[list[np.ndarray]] = [[] for _ in piece_ids]
    for split in ("train", "valid", "test"):
        for pid, ids, bars in split_rows(tokens_dir, manifest, split):
            if pid in where:
                cut = phrases(ids, bars, vocab, p.bars_per_phrase, p.max_len)
                out[where[pid]] = [s.copy() for s in cut.seqs]
    return out


def _phrase_set(clips: list[list[np.ndarray]], pieces: np.ndarray, labels: np.ndarray):
    s = PhraseSet()
    for k, y in zip(pieces, labels, strict=True):
        s.seqs.extend(clips[k])
        s.labels.extend([int(y)] * len(clips[k]))
    return s


def fit(
    p: SequenceParams,
    vocab: Vocab,
    clips: list[list[np.ndarray]],
    pieces: np.ndarray,
    labels: np.ndarray,
    seed: int,
    n_classes: int = 4,
) -> Encoder:
    """An encoder trained on the phrases of `pieces` (indices into `clips`), each labelled
    with its piece's class."""
    seed_everything(seed)
    s = _phrase_set(clips, pieces, labels)
    cfg = EncoderConfig.cpu_default(
        vocab_size=vocab.size,
        n_classes=n_classes,
        pad_id=vocab.pad_id,
        max_len=p.max_len,
        d_model=p.d_model,
        d_ff=4 * p.d_model,
        n_layer=p.n_layer,
        dropout=p.dropout,
    )
    model = Encoder(cfg)
    weight = class_weights(s.labels, n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps = p.epochs * -(-len(s.seqs) // p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, p.lr, total_steps=max(1, steps))
    rng = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    model.train()
    for epoch in range(p.epochs):
        for ids, y in phrase_batches(s, vocab, p.batch_size, p.transpose, rng):
            loss = F.cross_entropy(model(ids), y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if p.budget_s and time.monotonic() - start > p.budget_s and epoch + 1 < p.epochs:
            log.warning(
                "sequence member: emotion.quadrant.sequence.budget_s=%g reached after %d of %d "
                "epochs",
                p.budget_s,
                epoch + 1,
                p.epochs,
            )
            break
    return model.eval()


def predict(model: Encoder, clips: list[list[np.ndarray]], pieces: np.ndarray) -> np.ndarray:
    """[len(pieces), classes]: the mean of each piece's phrase probabilities (uniform for a
    piece without a phrase)."""
    k = model.config.n_classes
    seqs = [s for i in pieces for s in clips[i]]
    probs = phrase_probs(model, seqs) if seqs else np.zeros((0, k), np.float32)
    out, lo = np.full((len(pieces), k), 1.0 / k, np.float32), 0
    for row, i in enumerate(pieces):
        n = len(clips[i])
        if n:
            out[row] = probs[lo : lo + n].mean(0)
        lo += n
    return out


def save(model: Encoder, folder: str | Path, meta: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_encoder(model, folder, meta)


def load(folder: str | Path) -> tuple[Encoder, dict] | None:
    """The saved member and its config (bars_per_phrase, vocab_sha, ..), or None."""
    return load_encoder(folder) if (Path(folder) / "config.json").exists() else None
