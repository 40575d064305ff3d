"""Training windows, loss and validation for the composer-conditioned GPT.

A piece is read as BOS + its REMI ids + EOS, so the model learns how pieces start and end.
Each epoch draws, per piece, about as many random windows of `context + 1` tokens as the piece
fills (so long pieces are not under-sampled); a short piece is one window padded with PAD,
which the loss ignores. A share `start_frac` of windows begins at BOS: sampling without a
primer starts there, and only there does the composer id alone say what comes (later in a
piece, the tokens before tell the model much of it). An opening window is drawn from any
piece with equal odds, since a piece has one opening however long it is (drawn by length,
the 16 Beethoven quartets of the embedded corpus had 4x the openings of 70 Bach chorales).
For classifier-free guidance the composer id is replaced by 0 (unconditional) with
probability `composer_dropout`; a few input tokens become PAD, so the model does not copy its
input blindly. Stage 08 draws them with `WindowSampler` from the token shards through
`tokens.dataset.SampleStream`; every draw comes from a seed taken from the `torch.Generator`
that `training.fit` checkpoints, so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from midipipe.generator.gpt import GPT
from midipipe.generator.keys import KeyShift
from midipipe.generator.order import PitchOrder
from midipipe.tokens.dataset import Piece, epoch_seed


@dataclass
class WindowConfig:
    context: int = 512  # model input length; a window holds context + 1 tokens
    composer_dropout: float = 0.6  # P(composer id -> 0), trains the unconditional stream
    token_dropout: float = 0.01  # P(an input token -> PAD)
    start_frac: float = 0.25  # P(a window starts at BOS): unprimed sampling starts there
    max_windows: int = 0  # cap on windows per epoch (0 = as many as the corpus fills)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("composer_dropout", "token_dropout", "start_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def for_tokenizer(cls, tokenizer, context: int, **overrides) -> WindowConfig:
        vocab = tokenizer.vocab
        return cls(
            context=context,
            pad_id=tokenizer.pad_token_id,
            bos_id=vocab["BOS_None"],
            eos_id=vocab["EOS_None"],
            **overrides,
        )


def window_counts(length: np.ndarray, context: int) -> np.ndarray:
    """Windows each piece fills: BOS + ids + EOS in windows of `context + 1` tokens."""
    return np.maximum(1, -(-(np.asarray(length, dtype=np.int64) + 2) // (context + 1)))


def total_windows(length: np.ndarray, cfg: WindowConfig) -> int:
    """Windows one epoch draws over pieces of these lengths."""
    n = int(window_counts(length, cfg.context).sum())
    return min(n, cfg.max_windows) if cfg.max_windows else n


def epoch_windows(pieces: Sequence[Sequence[int]], cfg: WindowConfig) -> int:
    """Windows one epoch draws (what `steps_per_epoch` is computed from)."""
    return total_windows(np.array([len(p) for p in pieces]), cfg)


def steps_per_epoch(pieces: Sequence[Sequence[int]], cfg: WindowConfig, batch_size: int) -> int:
    return -(-epoch_windows(pieces, cfg) // batch_size)


def window(piece: Sequence[int], start: int, cfg: WindowConfig) -> np.ndarray:
    """Tokens start..start+context of BOS + piece + EOS, PAD past the end."""
    n, total = cfg.context + 1, len(piece) + 2
    out = np.full(n, cfg.pad_id, dtype=np.int64)
    hi = min(start + n, total)
    body_lo, body_hi = max(start, 1), min(hi, total - 1)  # the part inside the piece
    if start == 0:
        out[0] = cfg.bos_id
    if body_hi > body_lo:
        out[body_lo - start : body_hi - start] = np.asarray(piece[body_lo - 1 : body_hi - 1])
    if hi == total:
        out[hi - 1 - start] = cfg.eos_id
    return out


def collate(
    windows: list[np.ndarray], composers: list[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """Inputs/targets trimmed to the longest window in the batch (short pieces cost less)."""
    arr = np.stack(windows)
    used = int((arr != pad_id).sum(1).max())
    arr = torch.from_numpy(arr[:, : max(2, used)])
    return {
        "inputs": arr[:, :-1].contiguous(),
        "targets": arr[:, 1:].contiguous(),
        "composer": torch.tensor(composers, dtype=torch.long),
    }


@dataclass
class WindowSampler:
    """The epoch's windows as draws over pieces (`tokens.dataset.Sampler`): a share
    `start_frac` of them openings, any piece alike (kind 1), the rest by the windows a piece
    fills (kind 0). With `keys`, each window is transposed so its piece's key is C major / A
    minor (`generator.key: normalise`); with `order`, its chords go bottom-up
    (`generator.note_order: pitch`)."""

    cfg: WindowConfig
    keys: KeyShift | None = None
    order: PitchOrder | None = None

    def plan(self, length: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = window_counts(length, self.cfg.context).astype(np.float64)
        opening = rng.random(n) < self.cfg.start_frac
        by_length = rng.choice(len(length), size=n, p=counts / counts.sum())
        by_piece = rng.integers(len(length), size=n)
        return np.stack([np.where(opening, by_piece, by_length), opening], axis=1)

    def sample(self, piece: Piece, kind: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        cfg = self.cfg
        start_u, drop_u = rng.random(2)
        n_starts = len(piece.ids) + 2 - (cfg.context + 1) + 1  # valid starts of a full window
        start = min(int(start_u * n_starts), n_starts - 1) if n_starts > 1 and not kind else 0
        composer = 0 if drop_u < cfg.composer_dropout else piece.label
        move = self.keys.transpose if self.keys is not None else (lambda ids, _: ids)
        shift = self.keys.shift_of(piece.ids) if self.keys is not None else 0
        if self.order is None:  # cut, then transpose the window only
            return move(window(piece.ids, start, cfg), shift), composer
        # sorted whole: the transposition may fold a note down, and a window can start mid-note
        return window(self.order.sort(move(piece.ids, shift)), start, cfg), composer

    def collate(self, samples: list, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        batch = collate([w for w, _ in samples], [c for _, c in samples], self.cfg.pad_id)
        if self.cfg.token_dropout > 0:
            inputs = batch["inputs"]
            inputs[torch.from_numpy(rng.random(inputs.shape) < self.cfg.token_dropout)] = (
                self.cfg.pad_id
            )
        return batch


def train_batches(
    pieces: Sequence[Sequence[int]],
    composer_ids: Sequence[int],
    cfg: WindowConfig,
    batch_size: int,
    epoch: int,
    rng: torch.Generator,
) -> Iterator[dict]:
    """`WindowSampler`'s batches over pieces held in memory (the streaming path is
    `tokens.dataset.SampleStream`); all randomness from `rng` (`epoch` is only for logs)."""
    del epoch
    sampler = WindowSampler(cfg)
    np_rng = np.random.default_rng(epoch_seed(rng))
    draws = sampler.plan(np.array([len(p) for p in pieces]), epoch_windows(pieces, cfg), np_rng)
    for i in range(0, len(draws), batch_size):
        samples = [
            sampler.sample(
                Piece(np.asarray(pieces[j]), np.zeros(0), int(composer_ids[j])), k, np_rng
            )
            for j, k in draws[i : i + batch_size].tolist()
        ]
        yield sampler.collate(samples, np_rng)


def loss(
    model: GPT, batch: dict, label_smoothing: float = 0.1
) -> tuple[torch.Tensor, dict[str, float]]:
    """Label-smoothed next-token cross-entropy over non-PAD targets; logs the plain NLL."""
    device = next(model.parameters()).device
    inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)
    logits, _ = model(inputs, batch["composer"].to(device))
    logits = logits.float().flatten(0, 1)
    targets = targets.flatten()
    pad = getattr(model, "module", model).config.pad_id  # a DDP wrapper holds the GPT
    value = F.cross_entropy(logits, targets, ignore_index=pad, label_smoothing=label_smoothing)
    with torch.no_grad():
        nll = F.cross_entropy(logits, targets, ignore_index=pad)
    return value, {"nll": nll.item()}


def eval_windows(piece: Sequence[int], cfg: WindowConfig) -> list[np.ndarray]:
    """Consecutive windows covering BOS + piece + EOS, each target predicted exactly once."""
    total = len(piece) + 2
    return [window(piece, s, cfg) for s in range(0, max(1, total - 1), cfg.context)]


@torch.no_grad()
def evaluate(
    model: GPT,
    pieces: Sequence[Sequence[int]],
    composer_ids: Sequence[int],
    cfg: WindowConfig,
    batch_size: int,
    max_windows: int = 0,
    opening: bool = False,
) -> dict[str, float]:
    """Mean next-token NLL (and perplexity) per non-PAD target token under the given
    composer ids, no dropout and no label smoothing; the first `max_windows` windows if set,
    only each piece's first window if `opening`."""
    device = next(model.parameters()).device
    items = [
        (w, int(c))
        for p, c in zip(pieces, composer_ids, strict=True)
        for w in (eval_windows(p, cfg)[:1] if opening else eval_windows(p, cfg))
    ]
    if max_windows:
        items = items[:max_windows]
    total, count = 0.0, 0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        batch = collate([w for w, _ in chunk], [c for _, c in chunk], cfg.pad_id)
        logits, _ = model(batch["inputs"].to(device), batch["composer"].to(device))
        targets = batch["targets"].to(device).flatten()
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), targets, ignore_index=cfg.pad_id, reduction="sum"
        )
        total += nll.item()
        count += int((targets != cfg.pad_id).sum())
    mean = total / max(1, count)
    return {"valid_loss": mean, "valid_ppl": math.exp(min(mean, 50.0))}
