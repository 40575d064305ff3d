"""Stage 06, the hierarchical multi-label model (the MidiCaps plan).

Every piece's non-empty bars are cut into chunks, a frozen LM embeds each chunk once, and an
attention-pooling head learns the piece's tags (multi-hot, BCE). The decision threshold is
tuned on the valid split. Chunks are the project's REMI ids (token shards), or, for an LM
folder with its own tokenizer (the plan's `m2m_pt`), REMI-z strings read by `remi_z` from
each piece's MIDI file (`genre.remiz`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from midipipe.core.device import resolve_device
from midipipe.core.errors import BadMidi
from midipipe.core.io import write_json
from midipipe.core.params import TrainParams
from midipipe.data.splits import SPLITS
from midipipe.data.store import Corpus
from midipipe.genre import baselines, remiz
from midipipe.genre.hier_model import (
    FrozenLM,
    HierClassifier,
    HierConfig,
    save_hier,
    weights_sha256,
)
from midipipe.genre.labels import read_manifest, splits_in_use
from midipipe.genre.metrics import multilabel_metrics, tune_threshold
from midipipe.genre.params import GenreHierParams
from midipipe.genre.phrases import TOKENIZER_FILE, Cut, Vocab, chunks
from midipipe.tokens import remi
from midipipe.tokens.dataset import split_rows
from midipipe.training import distributed as ddp
from midipipe.training.fit import Fit, fit
from midipipe.training.hooks import EarlyStop, timed

log = logging.getLogger(__name__)


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


def remi_cuts(
    items: Iterable[tuple], vocab: Vocab, hp: GenreHierParams, max_tokens: int
) -> Iterator[tuple[str, Cut]]:
    """Each piece's chunks of REMI ids, from token-shard rows (piece id, ids, bar starts)."""
    for pid, ids, bars in items:
        yield pid, chunks(ids, bars, vocab, hp.bars_per_chunk, max_tokens, hp.max_chunks)


def remiz_cuts(
    lm: FrozenLM,
    piece_ids: Iterable[str],
    music: Callable[[str], bytes],
    hp: GenreHierParams,
    max_tokens: int,
    unreadable: list[str],
) -> Iterator[tuple[str, Cut]]:
    """Each piece's REMI-z chunks, read from its MIDI bytes; a file remi_z cannot read is
    logged and its piece id added to `unreadable`."""
    for pid in piece_ids:
        try:
            cut = remiz.chunks(lm.remiz, music(pid), hp.bars_per_chunk, max_tokens, hp.max_chunks)
        except BadMidi as exc:
            log.warning("genre_hier: piece %s left out: %s", pid, exc)
            unreadable.append(pid)
            continue
        yield pid, cut


def embed_pieces(
    lm: FrozenLM, cuts: Iterable[tuple[str, Cut]], batch_size: int
) -> tuple[list[str], list[np.ndarray], int, int]:
    """(piece ids, per-piece chunk embeddings, chunks, truncated chunks); pieces without a
    non-empty bar are left out."""
    cuts = [(pid, c) for pid, c in cuts if c.seqs]
    flat = [s for _, c in cuts for s in c.seqs]
    emb = lm.embed(flat, batch_size) if flat else np.zeros((0, lm.d_model), np.float32)
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
    corpus_dir: str | Path | None = "data/corpus",
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
    corpus = Corpus(corpus_dir, manifest) if corpus_dir is not None else None  # pieces' MIDI
    if lm.remiz is not None and corpus is None:
        return skipped(out_dir, f"the LM at {lm_dir} reads REMI-z from MIDI: no corpus_dir")

    t0 = time.perf_counter()
    sets: dict[str, ChunkSet] = {}
    unreadable: list[str] = []
    for split in SPLITS:
        if lm.remiz is None:
            items = split_rows(tokens_dir, manifest, split)
            cuts = remi_cuts((it for it in items if tags.get(it[0])), vocab, hp, max_tokens)
        else:
            pids = (p for p, r in rows.items() if r["split"] == split and tags.get(p))
            cuts = remiz_cuts(lm, pids, corpus.music, hp, max_tokens, unreadable)
        ids, xs, n, trunc = embed_pieces(lm, cuts, hp.embed_batch)
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
    train, valid, test, eval_split = splits_in_use(
        sets, lambda s: len(s.piece_ids), "pieces", "model choice and threshold"
    )

    torch.manual_seed(tp.seed)
    model = HierClassifier(
        HierConfig(d_in=lm.d_model, n_labels=len(names), d_attn=hp.d_attn, dropout=hp.dropout)
    )
    model.fit_scaler(torch.from_numpy(np.concatenate(train.x)))

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
        evaluate=timed(evaluate),
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
        "lm": {
            "path": str(lm_dir),
            "kind": lm.kind,
            "sha256": weights_sha256(lm_dir),
            "tokenizer_sha": lm.tokenizer_sha,
        },
        "chunk_tokens": "remi" if lm.remiz is None else "remi-z",
    }
    if ddp.is_main():  # under torchrun the main process alone writes
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
        "chunk_tokens": meta["chunk_tokens"],
        "unreadable_pieces": len(unreadable),
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
    used = (train, valid, test)
    music = corpus.lazy if corpus is not None else None
    inputs = baselines.inputs([s.piece_ids for s in used], music, latents_dir)
    metrics.update(baselines.multi_label_scores(inputs, *(s.y for s in used), seed=tp.seed))
    return HierResult(job, metrics, names, test.y, probs, test.piece_ids)
