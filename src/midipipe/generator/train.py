"""Stage 08: train the composer-conditioned GPT with the shared loop (`training.fit`)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from midipipe.core import params
from midipipe.core.device import resolve_device
from midipipe.core.errors import ParamError
from midipipe.core.io import write_json
from midipipe.core.params import TrainParams
from midipipe.generator import COMPOSERS_FILE, TOKENIZER_FILE, TRAINING_FILE
from midipipe.generator import windows as gd
from midipipe.generator.corpus import Corpus, read_table, train_and_valid
from midipipe.generator.gpt import CONDITIONS, GPT, GPTConfig, save_model
from midipipe.generator.keys import KEY_MODES, KeyShift
from midipipe.generator.order import (
    INTERVALS_FILE,
    NOTE_ORDERS,
    PitchOrder,
    as_trained_ids,
    chord_intervals,
)
from midipipe.tokens import remi
from midipipe.tokens.dataset import SampleStream, SplitIndex, epoch_seed, iter_pieces, loader
from midipipe.training import distributed as ddp
from midipipe.training.fit import Fit, fit

log = logging.getLogger(__name__)

ARCHITECTURE = ("n_layer", "n_head", "d_model", "d_ff", "composer_scale")
_GPU = GPTConfig.gpu_profile()

# The `generator:` keys each `profile:` sets (params.yaml leaves them null). cpu: about 1M
# parameters, 720 steps (18 epochs of 40), ~190 s on 2 quiet cores: twice the earlier 360
# steps, which learned REMI's grammar and rhythm but little of the pitch content; the
# doubling took the embedded corpus's valid loss from 1.63 to 1.18 and its judged
# conditioning at guidance 3 from 0.38 to 0.53 (ASAP 0.16 -> 0.23; README, issue 15).
# composer_scale 1.0, not the plan's 0.25, because in that budget the id at 0.25 moved the
# music too little for the classifier at guidance 1 (0.28 against 0.41). condition
# every_layer (the composer's FiLM of every layer norm, `gpt.py`): judged conditioning at
# guidance 3, paired by training seed, 0.52 -> 0.59 on the embedded corpus (mean of three),
# on ASAP 0.33 -> 0.44 and 0.37 -> 0.36 (README, issue 15), at about no cost in time;
# the gpu profile takes it, untried there (GPTConfig's default stays `input`, what the
# configs of older checkpoints mean). gpu: the plan's 8 x 512 GPT at context 8192, batch
# 2 x 8 accumulated windows per step, lr 3e-4 (train.lr x 0.3) after 5% warm-up, cosine.
PROFILES: dict[str, dict] = {
    "cpu": {
        "context": 128,
        "grad_accum": 1,
        "max_windows": 640,
        "eval_windows": 64,
        "model": {
            "n_layer": 4,
            "n_head": 4,
            "d_model": 128,
            "d_ff": 512,
            "composer_scale": 1.0,
            "condition": "every_layer",
        },
        "train": {"epochs": 18, "batch_size": 16, "lr_scale": 3.0},
    },
    "gpu": {
        "context": _GPU.context,
        "grad_accum": 8,
        "max_windows": 0,
        "eval_windows": 512,
        "model": {**{k: getattr(_GPU, k) for k in ARCHITECTURE}, "condition": "every_layer"},
        "train": {"epochs": 10, "batch_size": 2, "lr_scale": 0.3},
    },
}


@dataclass
class GeneratorParams:
    """params.yaml `generator:` (stage 08), its null keys filled by the profile (`PROFILES`)."""

    context: int = 512  # training window = the most tokens one token attends to
    composer_dropout: float = 0.6  # P(composer -> unconditional): what guidance contrasts
    token_dropout: float = 0.01
    start_frac: float = 0.25  # P(a training window starts at the piece's BOS)
    label_smoothing: float = 0.1
    key: str = "none"  # none | normalise: train on pieces transposed to C major / A minor
    note_order: str = "tokenizer"  # tokenizer | pitch: each position's notes by pitch (order.py)
    grad_accum: int = 1  # micro-batches per optimizer step (recomputed: memory of one)
    max_windows: int = 0  # training windows per epoch (0 = as many as the corpus fills)
    eval_windows: int = 0  # validation windows per epoch (0 = all)
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides (n_layer, ...)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.context >= 8, "context", ">= 8"),
            (0 <= self.composer_dropout <= 1, "composer_dropout", "in [0, 1]"),
            (0 <= self.token_dropout < 1, "token_dropout", "in [0, 1)"),
            (0 <= self.start_frac <= 1, "start_frac", "in [0, 1]"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.key in KEY_MODES, "key", f"one of {', '.join(KEY_MODES)}"),
            (self.note_order in NOTE_ORDERS, "note_order", f"one of {', '.join(NOTE_ORDERS)}"),
            (self.grad_accum >= 1, "grad_accum", ">= 1"),
            (self.max_windows >= 0, "max_windows", ">= 0 (0 = no cap)"),
            (self.eval_windows >= 0, "eval_windows", ">= 0 (0 = all)"),
        ]
        params.require(self, "generator", checks)
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        for key in self.model:
            if key not in fields or key in ("vocab_size", "pad_id", "n_composers", "context"):
                raise ParamError(f"generator.model.{key}: not a GPTConfig override")
        if self.model.get("condition", "input") not in CONDITIONS:
            raise ParamError(
                f"generator.model.condition: {self.model['condition']!r}, "
                f"expected one of {', '.join(CONDITIONS)}"
            )


def build_model(p: GeneratorParams, tokenizer, n_composers: int) -> GPT:
    cfg = GPTConfig(
        **{
            **p.model,
            "vocab_size": len(tokenizer.vocab),
            "pad_id": tokenizer.pad_token_id,
            "n_composers": n_composers,
            "context": p.context,
        }
    )
    return GPT(cfg)


def save_generator(
    model: GPT,
    out_dir: str | Path,
    table: dict,
    tokenizer_json: str | Path,
    key: str = "none",
    note_order: str = "tokenizer",
    intervals: list[list[int]] | None = None,
):
    """The GPT plus the composer table, tokenizer, key normalisation and note order it was
    trained with (and the chord steps of its training pieces, `training_chords`)."""
    out_dir = Path(out_dir)
    save_model(model, out_dir)
    write_json(out_dir / COMPOSERS_FILE, table)
    write_json(out_dir / TRAINING_FILE, {"key": key, "note_order": note_order})
    if intervals is not None:
        write_json(out_dir / INTERVALS_FILE, {"counts": intervals})
    shutil.copyfile(tokenizer_json, out_dir / TOKENIZER_FILE)


def trained_transforms(
    p: GeneratorParams, vocab: dict
) -> tuple[KeyShift | None, PitchOrder | None]:
    """What `p` does to every piece before the model sees it: the key normalisation and the
    note order (None: as tokenized)."""
    keys = KeyShift(vocab) if p.key == "normalise" else None
    order = PitchOrder(vocab) if p.note_order == "pitch" else None
    return keys, order


def training_chords(
    train_set, keys: KeyShift | None, order: PitchOrder | None, vocab: dict, n_ids: int
) -> list[list[int]]:
    """`order.chord_intervals` of the training pieces as the model sees them (key-normalised,
    chords bottom-up if so trained): the counts behind `generate.chord_prior`."""
    pieces = ((as_trained_ids(s.ids, keys, order), s.label) for s in iter_pieces(train_set))
    return chord_intervals(pieces, order or PitchOrder(vocab), n_ids)


def train(
    p: GeneratorParams,
    tp: TrainParams,
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    composers_json: str | Path = "data/composers.json",
    out_dir: str | Path = "models/generator",
    resume_dir: str | Path = "checkpoints/generator",
) -> tuple[Fit, dict]:
    """Train with the shared loop (exact resume, Ctrl+C safe); returns the job and flat
    metrics for metrics/generator.json."""
    tokenizer_json = Path(tokens_dir) / TOKENIZER_FILE
    tokenizer = remi.load_tokenizer(tokenizer_json)
    table = read_table(composers_json)
    train_set, valid_set, valid_source = train_and_valid(tokens_dir, manifest, table)
    wcfg = gd.WindowConfig.for_tokenizer(
        tokenizer,
        p.context,
        composer_dropout=p.composer_dropout,
        token_dropout=p.token_dropout,
        start_frac=p.start_frac,
        max_windows=p.max_windows,
    )
    n_windows = gd.total_windows(train_set.length, wcfg)
    keys, order = trained_transforms(p, tokenizer.vocab)
    # validate on what the model is trained for
    valid_set.pieces = [as_trained_ids(ids, keys, order) for ids in valid_set.pieces]
    # one pass over the training shards, by the process that writes the model (`save_best`)
    intervals = (
        training_chords(train_set, keys, order, tokenizer.vocab, table["n_ids"])
        if ddp.is_main()
        else None
    )
    torch.manual_seed(tp.seed)
    model = build_model(p, tokenizer, table["n_ids"])

    def evaluate(m: GPT) -> dict[str, float]:  # timed, so train tokens/s leaves it out
        t0 = time.perf_counter()
        out = gd.evaluate(
            m, valid_set.pieces, valid_set.composers, wcfg, tp.batch_size, p.eval_windows
        )
        return {**out, "valid_s": round(time.perf_counter() - t0, 2)}

    job = Fit(
        model=model,
        train_batches=lambda epoch, rng: train_stream(
            train_set, wcfg, n_windows, tp, rng, keys, order
        ),
        steps_per_epoch=-(-n_windows // (tp.batch_size * p.grad_accum)),
        sharded=True,
        loss=lambda m, b: gd.loss(m, b, p.label_smoothing),
        evaluate=evaluate,
        grad_accum=p.grad_accum,
        micro_weight=lambda b: float((b["targets"] != wcfg.pad_id).sum()),
    )
    n_tokens = train_set.tokens
    log.info(
        "generator: %d parameters, %d train pieces (%d tokens), %d valid, %d steps/epoch",
        model.n_params(),
        len(train_set),
        n_tokens,
        len(valid_set.pieces),
        job.steps_per_epoch,
    )
    fit(
        job,
        tp,
        resume_dir,
        save_best=lambda m: save_generator(
            m, out_dir, table, tokenizer_json, p.key, p.note_order, intervals
        ),
        fingerprint={
            "generator": dataclasses.asdict(p),
            "pieces": len(train_set),
            "tokens": n_tokens,
        },
    )
    if not ddp.is_main():  # the main process reports
        return job, {}
    metrics = training_metrics(job, model, p, train_set, valid_set, tp)
    gain = composer_gain(model, valid_set, wcfg, tp.batch_size)
    return job, {**metrics, "valid_source": valid_source, **gain}


def train_stream(
    index: SplitIndex,
    cfg: gd.WindowConfig,
    n_windows: int,
    tp: TrainParams,
    rng,
    keys: KeyShift | None = None,
    order: PitchOrder | None = None,
) -> DataLoader:
    """This process's share of one epoch's windows, streamed from the token shards."""
    stream = SampleStream(
        index,
        gd.WindowSampler(cfg, keys, order),
        n_windows,
        tp.batch_size,
        epoch_seed(rng),
        ddp.rank(),
        ddp.world_size(),
    )
    return loader(stream, tp.loader_workers, resolve_device(tp.device))


def composer_gain(model: GPT, valid: Corpus, cfg: gd.WindowConfig, batch_size: int) -> dict:
    """Validation NLL of the openings of pieces with a composer id, told it and told
    nothing: the drop is what the model learned to take from the id where nothing else in
    the context says who wrote the piece (0 = it ignores the id)."""
    model.eval()
    known = [(p, c) for p, c in zip(valid.pieces, valid.composers, strict=True) if c]
    if not known:
        return {}
    pieces, ids = [p for p, _ in known], [c for _, c in known]
    told = gd.evaluate(model, pieces, ids, cfg, batch_size, opening=True)
    blind = gd.evaluate(model, pieces, [0] * len(pieces), cfg, batch_size, opening=True)
    return {
        "opening_nll_composer": told["valid_loss"],
        "opening_nll_unconditional": blind["valid_loss"],
        "composer_gain_nats": blind["valid_loss"] - told["valid_loss"],
    }


def training_metrics(
    job: Fit,
    model: GPT,
    p: GeneratorParams,
    train_set: SplitIndex,
    valid_set: Corpus,
    tp: TrainParams,
) -> dict:
    best = min(job.history, key=lambda h: h["valid_loss"])
    train_s = sum(h["epoch_s"] - h.get("valid_s", 0.0) for h in job.history)
    tokens = sum(h.get("train_size", 0.0) for h in job.history)
    return {
        "best_valid_loss": best["valid_loss"],
        "best_valid_ppl": best["valid_ppl"],
        "best_epoch": best["epoch"],
        "epochs": len(job.history),
        "final_train_nll": job.history[-1].get("train_nll", float("nan")),
        "params": model.n_params(),
        "context": p.context,
        "effective_batch": tp.batch_size * p.grad_accum * ddp.world_size(),
        "processes": ddp.world_size(),
        "steps_per_epoch": job.steps_per_epoch,
        "train_pieces": len(train_set),
        "train_corpus_tokens": train_set.tokens,
        "valid_pieces": len(valid_set.pieces),
        "train_tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else 0.0,
        "device": str(resolve_device(tp.device)),
    }
