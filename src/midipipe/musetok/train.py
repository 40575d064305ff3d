"""Training data and evaluation for the MuseTok tokenizer (stage 03).

Samples are 16-bar segments, as in the reference's dataset: a random start bar per piece
each epoch, and optional pitch transposition of the whole segment by -6..+6 semitones
(kept inside the piano range, as the reference does). The loss is next-token cross-entropy
plus `beta` times the residual-VQ commitment loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from midipipe.core import params
from midipipe.core.device import resolve_device, seed_everything
from midipipe.core.params import TrainParams
from midipipe.musetok import checkpoint
from midipipe.musetok.encode import decoder_sample
from midipipe.musetok.model import MuseTok, MuseTokConfig
from midipipe.musetok.vocab import EVENT_TO_ID, PAD_ID, PITCHES
from midipipe.tokens.dataset import (
    Piece,
    SampleStream,
    SplitIndex,
    epoch_seed,
    load_pieces,
    loader,
    split_index,
)
from midipipe.training import distributed as ddp
from midipipe.training.fit import Fit, fit
from midipipe.training.hooks import EarlyStop, epochs_for_budget, timed

# id -> pitch for Note_Pitch tokens (-1 elsewhere), so transposition is one gather
_PITCH_OF = np.full(PAD_ID + 1, -1, dtype=np.int64)
for _p in PITCHES:
    _PITCH_OF[EVENT_TO_ID[f"Note_Pitch_{_p}"]] = _p
_ID_OF_PITCH = {p: EVENT_TO_ID[f"Note_Pitch_{p}"] for p in PITCHES}


# The `musetok:` keys each `profile:` sets (params.yaml leaves them null). cpu: a few-hundred-
# k-parameter model, 6 epochs of ~25 s on 2 cores (3 leave the first RVQ levels collapsed).
# gpu: the reference's config/tokenization.yaml (12 + 12 layers x 512, 16 levels x 2048
# codes, 16-bar segments, 1280-token decoder window, lr 1e-4 = train.lr x 0.1 down to 5e-6,
# clip 0.5).
PROFILES: dict[str, dict] = {
    "cpu": {
        "size": "cpu_default",
        "dec_seqlen": 256,
        "max_bars": 8,
        "train": {"batch_size": 16, "epochs": 6, "grad_clip": 0.5, "lr_scale": 1.0},
    },
    "gpu": {
        "size": "official",
        "dec_seqlen": 1280,
        "max_bars": 16,
        "train": {
            "batch_size": 16,
            "epochs": 30,
            "grad_clip": 0.5,
            "lr_scale": 0.1,
            "min_lr": 5e-6,
        },
    },
}
SIZES = ("cpu_default", "small", "large", "official")


@dataclass
class MuseTokTrainParams:
    """`musetok:` section of params.yaml (training keys override `train:`), its null keys
    filled by the profile (`PROFILES`)."""

    checkpoint: str | None = None  # a pretrained model (dir or official model.pt) instead
    init_from: str | None = None  # fine-tune from these weights (a folder of ours, same config)
    size: str = "cpu_default"  # cpu_default | small | large | official
    dec_seqlen: int = 512  # decoder window in tokens (the reference: 1280)
    max_bars: int = 16
    beta: float = 1.0  # commitment loss weight
    augment: bool = True  # pitch transposition by -6..+6, as the reference
    max_pieces: int = 0  # cap on training pieces per epoch (0 = all)
    budget_s: float = 0.0  # training seconds: the epochs that fit, at most train.epochs (0: off)
    train: dict | None = None  # overrides of the shared `train:` defaults

    def __post_init__(self) -> None:
        checks = [
            (self.size in SIZES, "size", f"one of {', '.join(SIZES)}"),
            (self.dec_seqlen >= 8, "dec_seqlen", ">= 8"),
            (self.max_bars >= 1, "max_bars", ">= 1"),
            (self.budget_s >= 0, "budget_s", ">= 0"),
            (not (self.checkpoint and self.init_from), "init_from", "null when checkpoint is set"),
        ]
        params.require(self, "musetok", checks)


def model_config(p: MuseTokTrainParams) -> MuseTokConfig:
    """The architecture stage 03 trains: a named size with the decoder window of `p`."""
    return dataclasses.replace(getattr(MuseTokConfig, p.size)(), dec_seqlen=p.dec_seqlen)


def transpose(ids: np.ndarray, shift: int) -> np.ndarray:
    pitches = _PITCH_OF[ids]
    out = ids.copy()
    mask = pitches >= 0
    out[mask] = [_ID_OF_PITCH[p + shift] for p in pitches[mask]]
    return out


def random_shift(ids: np.ndarray, rng: torch.Generator) -> int:
    """A shift in -6..+6 that keeps every pitch within 21..108 (0 if none does)."""
    pitches = _PITCH_OF[ids]
    pitches = pitches[pitches >= 0]
    if pitches.size == 0:
        return 0
    lo, hi = PITCHES.start - pitches.min(), PITCHES.stop - 1 - pitches.max()
    allowed = [s for s in range(-6, 7) if lo <= s <= hi]
    return allowed[int(torch.randint(len(allowed), (1,), generator=rng))] if allowed else 0


def collate(samples: list) -> dict[str, torch.Tensor]:
    """Stack samples, padding decoder sequences to the longest in the batch (not to a fixed
    window), which saves most of the work on short pieces."""
    t = max(s.length for s in samples)
    dec_inp = np.full((len(samples), t), PAD_ID, np.int64)
    dec_tgt = np.full((len(samples), t), PAD_ID, np.int64)
    for i, s in enumerate(samples):
        n = min(t, len(s.dec_input))
        dec_inp[i, :n] = s.dec_input[:n]
        dec_tgt[i, :n] = s.dec_target[:n]
    enc_ids = np.stack([s.enc.ids for s in samples])
    enc_mask = np.stack([s.enc.pad_mask for s in samples])
    # Trailing padding is masked out of attention and the bar's output is read at position 0,
    # so cutting every row to the longest real bar in the batch changes nothing but the cost
    # (most bars are far shorter than the 128-token window).
    width = max(2, int((~enc_mask).any(axis=(0, 1)).nonzero()[0].max()) + 1)
    return {
        "enc_ids": torch.from_numpy(np.ascontiguousarray(enc_ids[..., :width])),
        "enc_mask": torch.from_numpy(np.ascontiguousarray(enc_mask[..., :width])),
        "dec_inp": torch.from_numpy(dec_inp),
        "dec_tgt": torch.from_numpy(dec_tgt),
        "bar_pos": torch.from_numpy(np.stack([s.bar_pos for s in samples])),
    }


def sample(
    ids: Sequence[int],
    bar_starts: Sequence[int],
    p: MuseTokTrainParams,
    rng: torch.Generator | None,
):
    """One segment of a piece: a random start bar when `rng` is given, else bar 0."""
    n_start = max(1, len(bar_starts) - p.max_bars)
    start = int(torch.randint(n_start, (1,), generator=rng)) if rng is not None else 0
    arr = np.asarray(ids, dtype=np.int64)
    if rng is not None and p.augment:
        arr = transpose(arr, random_shift(arr, rng))
    return decoder_sample(
        arr.tolist(),
        bar_starts,
        start_bar=start,
        max_bars=p.max_bars,
        dec_seqlen=p.dec_seqlen,
        pad_to_same=False,
    )


@dataclass
class SegmentSampler:
    """Each piece once per epoch in a random order, as a segment from a random start bar
    (`tokens.dataset.Sampler`); an epoch that asks for more pieces repeats the order."""

    p: MuseTokTrainParams

    def plan(self, length: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        rounds = -(-n // len(length))
        order = np.concatenate([rng.permutation(len(length)) for _ in range(rounds)])
        return np.stack([order[:n], np.zeros(n, dtype=np.int64)], axis=1)

    def sample(self, piece: Piece, kind: int, rng: np.random.Generator):
        del kind
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return sample(piece.ids, piece.bar_starts.tolist(), self.p, generator)

    def collate(self, samples: list, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        del rng
        return collate(samples)


def train_batches(
    pieces: list[tuple[list[int], list[int]]],
    p: MuseTokTrainParams,
    batch_size: int,
    epoch: int,
    rng: torch.Generator,
) -> Iterator[dict]:
    """`SegmentSampler`'s batches over pieces held in memory (the streaming path is
    `tokens.dataset.SampleStream`); `epoch` is only for logs."""
    del epoch
    sampler = SegmentSampler(p)
    np_rng = np.random.default_rng(epoch_seed(rng))
    n = min(len(pieces), p.max_pieces or len(pieces))
    draws = sampler.plan(np.ones(len(pieces), dtype=np.int64), n, np_rng)[:, 0].tolist()
    for i in range(0, n, batch_size):
        chunk = [
            Piece(np.asarray(pieces[j][0]), np.asarray(pieces[j][1]), 0)
            for j in draws[i : i + batch_size]
        ]
        yield collate([sampler.sample(piece, 0, np_rng) for piece in chunk])


def stream_batches(
    index: SplitIndex, p: MuseTokTrainParams, tp: TrainParams, n_pieces: int
) -> Callable[[int, torch.Generator], DataLoader]:
    """(epoch, rng) -> this process's batches of the epoch, streamed from the token shards."""

    def batches(epoch: int, rng: torch.Generator) -> DataLoader:
        del epoch
        stream = SampleStream(
            index,
            SegmentSampler(p),
            n_pieces,
            tp.batch_size,
            epoch_seed(rng),
            ddp.rank(),
            ddp.world_size(),
        )
        return loader(stream, tp.loader_workers, resolve_device(tp.device))

    return batches


def loss(model: MuseTok, batch: dict, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model(batch["enc_ids"], batch["enc_mask"], batch["dec_inp"], batch["bar_pos"])
    losses = model.compute_loss(out, batch["dec_tgt"], beta=beta)
    return losses["total_loss"], {
        "recons_loss": losses["recons_loss"].item(),
        "commit_loss": losses["commit_loss"].item(),
    }


def evaluate(
    model: MuseTok,
    pieces: list[tuple[list[int], list[int]]],
    p: MuseTokTrainParams,
    batch_size: int,
) -> dict[str, float]:
    """Valid reconstruction loss and token accuracy (non-PAD targets, teacher forcing), and
    per-level code usage and perplexity over every valid bar."""
    device = next(model.parameters()).device
    n_q, size = model.config.num_quantizers, model.config.codebook_size
    counts = torch.zeros(n_q, size, dtype=torch.long)
    total_loss = correct = tokens = 0.0
    for i in range(0, len(pieces), batch_size):
        batch = collate([sample(*piece, p, None) for piece in pieces[i : i + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch["enc_ids"], batch["enc_mask"], batch["dec_inp"], batch["bar_pos"])
        target = batch["dec_tgt"]
        real = target != PAD_ID
        losses = model.compute_loss(out, target, beta=p.beta)
        n = int(real.sum())
        total_loss += losses["recons_loss"].item() * n
        correct += int(((out.logits.argmax(-1) == target) & real).sum())
        tokens += n
        # codes of real bars only (padding bars of short pieces would inflate usage)
        real_bars = batch["enc_ids"][..., 0] != PAD_ID
        codes = out.codes.reshape(-1, n_q)[real_bars.reshape(-1)].cpu()
        for level in range(n_q):
            counts[level] += torch.bincount(codes[:, level], minlength=size)
    metrics = {
        "valid_loss": total_loss / max(1, tokens),
        "valid_token_acc": correct / max(1, tokens),
        "valid_bars": int(counts[0].sum()),
    }
    for level in range(n_q):
        probs = counts[level].float() / max(1, int(counts[level].sum()))
        nz = probs[probs > 0]
        metrics[f"code_usage_l{level}"] = int((counts[level] > 0).sum()) / size
        metrics[f"code_perplexity_l{level}"] = float(math.exp(-(nz * nz.log()).sum()))
    return metrics


@dataclass
class MuseTokRun:
    """What stage 03 reports: flat metrics and the per-epoch history for the curves."""

    metrics: dict
    history: list[dict] = field(default_factory=list)
    title: str = "MuseTok training"


def train_musetok(
    p: MuseTokTrainParams,
    tp: TrainParams,
    tokens_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    resume_dir: str | Path = "checkpoints/musetok",
) -> MuseTokRun:
    """Train MuseTok on the train split (or evaluate `p.checkpoint`) and save it to `out_dir`."""
    train = split_index(tokens_dir, manifest, "train")
    train = train.subset(train.bars > 0)
    valid_index = split_index(tokens_dir, manifest, "valid")
    valid_index = valid_index.subset(valid_index.bars > 0)
    if not len(valid_index):
        valid_index = train.subset(np.arange(min(32, len(train))))
    valid = [(piece.ids, piece.bar_starts.tolist()) for piece in load_pieces(valid_index)]

    if p.checkpoint:  # a pretrained tokenizer: evaluate it and store it as safetensors
        model = checkpoint.load(p.checkpoint)
        model.eval()
        with torch.inference_mode():
            valid_metrics = evaluate(model, valid, p, tp.batch_size)
        if ddp.is_main():  # under torchrun the main process alone writes
            checkpoint.save(model, out_dir)
        return MuseTokRun(
            {"source": "pretrained", "lr": tp.lr, **valid_metrics},
            [{"epoch": 0, **valid_metrics}],
            "MuseTok (pretrained, not trained here)",
        )

    seed_everything(tp.seed)
    if p.init_from:  # fine-tune: the weights must fit the architecture these params build
        model = checkpoint.load_matching(p.init_from, model_config(p), "musetok.init_from")
    else:
        model = MuseTok(model_config(p))
    n_pieces = min(len(train), p.max_pieces or len(train))
    job = Fit(
        model=model,
        train_batches=stream_batches(train, p, tp, n_pieces),
        steps_per_epoch=-(-n_pieces // tp.batch_size),
        sharded=True,
        loss=lambda m, batch: loss(m, batch, p.beta),
        evaluate=timed(lambda m: evaluate(m, valid, p, tp.batch_size)),
    )
    if p.budget_s:  # as many epochs as the budget holds, so the lr schedule spans the run
        epochs = epochs_for_budget(job, p.budget_s, tp.epochs, probe_steps=24)
        tp = dataclasses.replace(tp, epochs=epochs)
        stop = EarlyStop(job, patience=0, budget_s=p.budget_s)
    fit(
        job,
        tp,
        resume_dir,
        save_best=lambda m: checkpoint.save(m, out_dir),
        fingerprint={"musetok": dataclasses.asdict(p), "pieces": len(train)},
    )
    if p.budget_s:
        stop.finish()
    best = min(job.history, key=lambda h: h["valid_loss"])
    metrics = {
        "source": "fine-tuned" if p.init_from else "trained",
        "lr": tp.lr,
        "epochs": tp.epochs,  # planned (by the budget, when set)
        "epochs_run": len(job.history),
        "train_pieces": len(train),
        "valid_pieces": len(valid),
        "best_epoch": best["epoch"],
        # the history's `lr` is the schedule's at the epoch's end; `lr` here is the peak
        **{k: v for k, v in best.items() if k not in ("epoch", "lr")},
    }
    return MuseTokRun(metrics, job.history)
