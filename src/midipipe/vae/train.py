"""Training the label-conditioned VAE (stage 12): bar-aligned REMI windows, the ELBO with KL
annealing and free bits, and per-epoch reconstruction and KL logged apart.

The loss per batch, in nats per token:
    recon_ce + beta * sum_d max(free_bits, mean_batch KL_d) / tokens per window
where KL_d is the KL of latent dimension d to the window's own label component and beta
ramps linearly from 0 to `kl_weight` over the first `kl_anneal_frac` of training. Both are
the classic cures for posterior collapse (Bowman et al., 2016; Kingma et al., 2016): a
decoder this strong otherwise learns to ignore z.

A trained folder is self-contained like the generator's, and written by the same
`save_generator`: weights, config.json, composers.json (label names -> ids as trained)
and tokenizer.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from midipipe.core import params
from midipipe.core.device import resolve_device
from midipipe.core.errors import ParamError
from midipipe.core.params import TrainParams
from midipipe.evaluation import generated as ev
from midipipe.generator import TOKENIZER_FILE
from midipipe.generator import windows as gd
from midipipe.generator.corpus import Corpus, read_table, train_and_valid
from midipipe.generator.keys import KEY_MODES, KeyShift
from midipipe.generator.train import save_generator
from midipipe.tokens import remi
from midipipe.tokens.dataset import (
    Piece,
    SampleStream,
    SplitIndex,
    epoch_seed,
    loader,
    slot_batches,
)
from midipipe.training import distributed as ddp
from midipipe.training.fit import Fit, fit
from midipipe.vae.model import LabelVAE, VAEConfig

log = logging.getLogger(__name__)

FIXED = ("vocab_size", "pad_id", "n_labels", "window")  # set from the data, not by params

# The `vae:` keys each `profile:` sets (params.yaml leaves them null). cpu: the ablations'
# best (README, VAE): many small steps, no layer norm, the label added at every decoder
# position (`label_add`, both profiles; measured on cpu only); 900 steps (9 epochs of 100,
# ~190 s quiet): the earlier 96 steps left the decoder guessing at REMI (valid recon CE 3.23,
# 189 of 256 tokens repaired by the grammar), 700 took it to 1.58 and 13, and 900 (1.42)
# brought judged conditioning above chance with p < 0.01 on three training seeds of three
# where 700 reached it on one (issue 15, README).
# large (the gpu profile): the plan's ~500-token windows, 6 + 6 layers x 512 with layer
# norm (deep stacks want it), every window the corpus fills, lr 3e-4.
PROFILES: dict[str, dict] = {
    "cpu": {
        "window": 256,
        "max_windows": 800,
        "eval_windows": 64,
        "model": {
            "d_model": 128,
            "n_head": 4,
            "d_ff": 256,
            "n_enc_layer": 2,
            "n_dec_layer": 2,
            "d_latent": 32,
            "layer_norm": False,
            "label_add": True,
        },
        "train": {"epochs": 9, "batch_size": 8, "lr_scale": 3.0},
    },
    "gpu": {
        "window": 512,
        "max_windows": 0,
        "eval_windows": 512,
        "model": {
            "d_model": 512,
            "n_head": 8,
            "d_ff": 2048,
            "n_enc_layer": 6,
            "n_dec_layer": 6,
            "d_latent": 128,
            "layer_norm": True,
            "label_add": True,
        },
        "train": {"epochs": 20, "batch_size": 32, "lr_scale": 0.3},
    },
}


@dataclass
class VAEParams:
    """params.yaml `vae:` (stage 12), its null keys filled by the profile (`PROFILES`)."""

    window: int = 256  # tokens per window (the users' plan: 500)
    kl_weight: float = 1.0  # beta after annealing
    kl_anneal_frac: float = 0.5  # share of training over which beta ramps up (0 = off)
    free_bits: float = 0.1  # nats per latent dimension below which KL is not pushed (0 = off)
    label_dropout: float = 0.0  # P(the decoder's label -> 0, unconditional): what guidance mixes
    key: str = "none"  # none | normalise: train on pieces transposed to C major / A minor
    max_windows: int = 256  # training windows per epoch (0 = as many as the corpus fills)
    eval_windows: int = 64  # validation windows (0 = all)
    model: dict[str, Any] = field(default_factory=dict)  # VAEConfig overrides (layer_norm, ...)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.window >= 8, "window", ">= 8"),
            (self.kl_weight >= 0, "kl_weight", ">= 0"),
            (0 <= self.kl_anneal_frac <= 1, "kl_anneal_frac", "in [0, 1]"),
            (self.free_bits >= 0, "free_bits", ">= 0"),
            (0 <= self.label_dropout < 1, "label_dropout", "in [0, 1)"),
            (self.key in KEY_MODES, "key", f"one of {', '.join(KEY_MODES)}"),
            (self.max_windows >= 0, "max_windows", ">= 0 (0 = no cap)"),
            (self.eval_windows >= 0, "eval_windows", ">= 0 (0 = all)"),
        ]
        params.require(self, "vae", checks)
        names = {f.name for f in dataclasses.fields(VAEConfig)}
        for key in self.model:
            if key not in names or key in FIXED:
                raise ParamError(f"vae.model.{key}: not a VAEConfig override")

    def beta(self, progress: float) -> float:
        """KL weight at `progress` (0..1) through training."""
        if self.kl_anneal_frac == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, progress / self.kl_anneal_frac)


def build_model(p: VAEParams, tokenizer, n_labels: int) -> LabelVAE:
    cfg = VAEConfig(
        **{
            **p.model,
            "vocab_size": len(tokenizer.vocab),
            "pad_id": tokenizer.pad_token_id,
            "n_labels": n_labels,
            "window": p.window,
        }
    )
    return LabelVAE(cfg)


# -- windows ---------------------------------------------------------------------------------


@dataclass
class BarWindowSampler:
    """Windows starting on a random bar line, about as many per piece as the piece fills
    (`tokens.dataset.Sampler`): each piece's windows once in a random order, repeated when
    an epoch asks for more. With `keys`, transposed so the piece's key is C major / A minor."""

    cfg: gd.WindowConfig
    keys: KeyShift | None = None

    def plan(self, length: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        owners = np.repeat(np.arange(len(length)), -(-length // (self.cfg.context + 1)))
        order = np.concatenate([rng.permutation(owners) for _ in range(-(-n // len(owners)))])
        return np.stack([order[:n], np.zeros(n, dtype=np.int64)], axis=1)

    def sample(self, piece: Piece, kind: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        del kind
        bars = piece.bar_starts[piece.bar_starts < len(piece.ids)]
        start = int(bars[min(int(rng.random() * len(bars)), len(bars) - 1)]) if len(bars) else 0
        out = gd.window(piece.ids, start + 1, self.cfg)  # +1: skip the BOS slot
        if self.keys is not None:
            out = self.keys.transpose(out, self.keys.shift_of(piece.ids))
        return out, piece.label

    def collate(self, samples: list, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        del rng
        return stack([w for w, _ in samples], [c for _, c in samples], self.cfg.pad_id)


def train_batches(
    index: SplitIndex,
    wcfg: gd.WindowConfig,
    batch_size: int,
    n_windows: int,
    tp: TrainParams,
    keys: KeyShift | None = None,
) -> Callable[[int, torch.Generator], Iterator[dict]]:
    """(epoch, rng) -> this process's batches of the epoch, streamed from the token shards;
    `progress` (0..1 through the epoch) drives KL annealing, so a resumed run anneals alike."""

    def batches(epoch: int, rng: torch.Generator) -> Iterator[dict]:
        world, rank = ddp.world_size(), ddp.rank()
        n_batches = slot_batches(n_windows, batch_size, world, 1)[rank]
        stream = SampleStream(
            index, BarWindowSampler(wcfg, keys), n_windows, batch_size, epoch_seed(rng), rank, world
        )
        for b, batch in enumerate(loader(stream, tp.loader_workers, resolve_device(tp.device))):
            batch["progress"] = epoch + b / n_batches
            yield batch

    return batches


def n_train_windows(index: SplitIndex, window: int, max_windows: int) -> int:
    n = int((-(-index.length // window)).sum())
    return min(n, max_windows) if max_windows else n


def stack(rows: Sequence[Sequence[int]], labels: Sequence[int], pad_id: int) -> dict:
    """Windows padded to the longest one; `ids` [B, T], `labels` [B]."""
    width = max(1, max(len(r) for r in rows))
    arr = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    used = int((arr != pad_id).sum(1).max())
    return {
        "ids": torch.from_numpy(arr[:, : max(1, used)]),
        "labels": torch.tensor(list(labels), dtype=torch.long),
    }


def eval_windows(corpus: Corpus, window: int, per_piece: int) -> list[tuple[list[int], int]]:
    """(whole-bar excerpt of at most `window` tokens, label) pairs, spread over each piece."""
    return [
        (x, cid)
        for ids, bars, cid in zip(corpus.pieces, corpus.bar_starts, corpus.composers, strict=True)
        for x in ev.excerpts(ids, bars, window, per_piece)
    ]


# -- loss and validation ---------------------------------------------------------------------


def loss(model: LabelVAE, batch: dict, p: VAEParams, epochs: int) -> tuple[torch.Tensor, dict]:
    """The annealed, free-bits ELBO per token; logs recon CE and KL (per window and per token).
    The KL is always to the window's own component; only the decoder's label is dropped."""
    device = next(model.parameters()).device
    ids, labels = batch["ids"].to(device), batch["labels"].to(device)
    dropped = torch.rand(len(labels), device=device) < p.label_dropout
    logits, mu, logvar = model(ids, labels, dec_labels=labels.masked_fill(dropped, 0))
    pad = model.config.pad_id
    recon = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), ignore_index=pad)
    kl_d = model.kl_per_dim(mu, logvar, labels)
    tokens_per_window = float((ids != pad).sum()) / len(ids)
    beta = p.beta(batch["progress"] / max(1, epochs))
    pushed = kl_d.mean(0).clamp(min=p.free_bits).sum()
    value = recon + beta * pushed / tokens_per_window
    kl = float(kl_d.detach().sum(1).mean())
    return value, {
        "recon_ce": recon.item(),
        "kl": kl,
        "kl_tok": kl / tokens_per_window,
        "beta": beta,
    }


@torch.no_grad()
def posteriors(
    model: LabelVAE, windows: Sequence[Sequence[int]], batch_size: int = 64
) -> np.ndarray:
    """Posterior means [N, d_latent] of token windows."""
    device = next(model.parameters()).device
    mus = [np.zeros((0, model.config.d_latent))]
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        ids = stack(chunk, [0] * len(chunk), model.config.pad_id)["ids"]
        mus.append(model.posterior(ids.to(device))[0].cpu().numpy())
    return np.concatenate(mus)


@torch.no_grad()
def evaluate(
    model: LabelVAE, items: Sequence[tuple[list[int], int]], p: VAEParams, batch_size: int
) -> dict[str, float]:
    """Recon CE per token with z = the posterior mean, KL per window to the label component,
    their sum as the full-weight ELBO per token (`valid_loss`), and active latent units
    (dimensions whose posterior mean varies across windows by more than 0.01; Burda et al.)."""
    device = next(model.parameters()).device
    pad = model.config.pad_id
    ce_sum = kl_sum = 0.0
    n_tok = 0
    mus = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        batch = stack([w for w, _ in chunk], [c for _, c in chunk], pad)
        ids, labels = batch["ids"].to(device), batch["labels"].to(device)
        logits, mu, logvar = model(ids, labels, sample=False)
        ce_sum += F.cross_entropy(
            logits.float().flatten(0, 1), ids.flatten(), ignore_index=pad, reduction="sum"
        ).item()
        kl_sum += model.kl_per_dim(mu, logvar, labels).sum().item()
        n_tok += int((ids != pad).sum())
        mus.append(mu.cpu())
    recon = ce_sum / max(1, n_tok)
    kl_tok = kl_sum / max(1, n_tok)
    active = int((torch.cat(mus).var(0) > 0.01).sum()) if len(items) > 1 else 0
    return {
        "valid_loss": recon + p.kl_weight * kl_tok,
        "valid_recon_ce": recon,
        "valid_kl": kl_sum / max(1, len(items)),
        "valid_kl_tok": kl_tok,
        "valid_active_units": float(active),
    }


# -- the stage -------------------------------------------------------------------------------


def train(
    p: VAEParams,
    tp: TrainParams,
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    composers_json: str | Path = "data/composers.json",
    out_dir: str | Path = "models/vae",
    resume_dir: str | Path = "checkpoints/vae",
) -> tuple[Fit, dict]:
    """Train with the shared loop (exact resume, Ctrl+C safe); returns the job and flat
    metrics for metrics/vae.json."""
    tokenizer_json = Path(tokens_dir) / TOKENIZER_FILE
    tokenizer = remi.load_tokenizer(tokenizer_json)
    table = read_table(composers_json)
    train_set, valid_set, valid_source = train_and_valid(tokens_dir, manifest, table)
    wcfg = gd.WindowConfig.for_tokenizer(tokenizer, p.window - 1)
    keys = KeyShift(tokenizer.vocab) if p.key == "normalise" else None
    if keys is not None:  # validate on what the model is trained for
        valid_set.pieces = [keys.normalise(ids) for ids in valid_set.pieces]
    valid_items = eval_windows(valid_set, p.window, 4)
    if p.eval_windows:
        valid_items = valid_items[: p.eval_windows]
    torch.manual_seed(tp.seed)
    model = build_model(p, tokenizer, table["n_ids"])
    n_windows = n_train_windows(train_set, p.window, p.max_windows)

    def timed_evaluate(m: LabelVAE) -> dict[str, float]:
        t0 = time.perf_counter()
        out = evaluate(m, valid_items, p, tp.batch_size)
        return {**out, "valid_s": round(time.perf_counter() - t0, 2)}

    job = Fit(
        model=model,
        train_batches=train_batches(train_set, wcfg, tp.batch_size, n_windows, tp, keys),
        steps_per_epoch=-(-n_windows // tp.batch_size),
        sharded=True,
        loss=lambda m, b: loss(m, b, p, tp.epochs),
        evaluate=timed_evaluate,
    )
    log.info(
        "vae: %d parameters, %d train pieces, %d windows/epoch, %d valid windows",
        model.n_params(),
        len(train_set),
        n_windows,
        len(valid_items),
    )
    fit(
        job,
        tp,
        resume_dir,
        save_best=lambda m: save_generator(m, out_dir, table, tokenizer_json, p.key),
        fingerprint={
            "vae": dataclasses.asdict(p),
            "pieces": len(train_set),
            "tokens": train_set.tokens,
        },
    )
    best = min(job.history, key=lambda h: h["valid_loss"])
    train_s = sum(h["epoch_s"] - h.get("valid_s", 0.0) for h in job.history)
    metrics = {
        "best_epoch": best["epoch"],
        "best_valid_loss": best["valid_loss"],
        "best_valid_recon_ce": best["valid_recon_ce"],
        "best_valid_kl": best["valid_kl"],
        "best_valid_active_units": best["valid_active_units"],
        "final_train_recon_ce": job.history[-1]["train_recon_ce"],
        "final_train_kl": job.history[-1]["train_kl"],
        "epochs": len(job.history),
        "params": model.n_params(),
        "d_latent": model.config.d_latent,
        "layer_norm": model.config.layer_norm,
        "window": p.window,
        "kl_weight": p.kl_weight,
        "free_bits": p.free_bits,
        "label_dropout": p.label_dropout,
        "label_add": model.config.label_add,
        "steps": len(job.history) * job.steps_per_epoch,
        "kl_anneal_frac": p.kl_anneal_frac,
        "train_pieces": len(train_set),
        "windows_per_epoch": n_windows,
        "valid_windows": len(valid_items),
        "valid_source": valid_source,
        "train_s": round(train_s, 1),
        "device": str(resolve_device(tp.device)),
    }
    return job, metrics
