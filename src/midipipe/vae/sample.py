"""Sampling the label-conditioned VAE and evaluating it (stage 13), and the one-file entry
point behind `midipipe generate --model vae`.

A piece is decoded from z drawn from its composer's prior component; the REMI grammar of
`sampling` masks every step, so the output always decodes. Pieces of all composers are
decoded together as one batch with a KV cache per layer; with classifier-free guidance
their unconditional twins (label 0, same z) join that batch.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic
import torch
from tqdm import tqdm

from midipipe.core.device import resolve_device
from midipipe.core.errors import NothingToLearn, ParamError
from midipipe.core.reports import skipped_reason
from midipipe.data.composers import composer_id_of
from midipipe.data.sources.names import slug
from midipipe.evaluation import conditioning as cond
from midipipe.evaluation import generated as ev
from midipipe.evaluation.judge import Judge, judge_conditioning, make_judge
from midipipe.evaluation.novelty import novelty
from midipipe.generator import COMPOSERS_FILE, TOKENIZER_FILE
from midipipe.generator.corpus import eval_corpus, read_table, split_pieces
from midipipe.generator.generate import real_excerpts, sampling_threads
from midipipe.generator.gpt import check_vocab
from midipipe.generator.keys import as_trained, primer_keys
from midipipe.generator.sampling import (
    RemiGrammar,
    SampleConfig,
    TokenSampler,
    inference_precision,
    mix_guidance,
    run_steps,
    to_midi,
)
from midipipe.tokens import remi
from midipipe.tokens.dataset import TokenLists, iter_pieces
from midipipe.vae.model import LabelVAE, load_vae
from midipipe.vae.train import eval_windows, posteriors

log = logging.getLogger(__name__)


@dataclass
class GenerateVAEParams:
    """params.yaml `generate_vae:` (stage 13)."""

    pieces_per_composer: int = 4
    temperature: float = 1.0
    top_p: float = 0.95
    guidance: float = 1.0  # classifier-free guidance on the decoder's label (1 = off)
    prior_scale: float = 1.0  # z's std as a share of the component's (0 = its mean)
    max_tokens: int = 0  # new tokens per piece (0 = the model's window)
    seed: int = 1234
    real_chunks_per_piece: int = 4  # real excerpts per piece for the judge and references
    latent_windows_per_piece: int = 4  # held-out windows per piece for the latent plot
    device: str = "auto"
    judge_min_ratio: float = 2.0  # judge accuracy / chance on real excerpts for figures to count

    def __post_init__(self) -> None:
        if self.pieces_per_composer < 1:
            raise ParamError(
                f"generate_vae.pieces_per_composer: must be >= 1, got {self.pieces_per_composer}"
            )
        if self.judge_min_ratio < 1:
            raise ParamError(
                f"generate_vae.judge_min_ratio: must be >= 1 (chance), got {self.judge_min_ratio}"
            )
        if self.prior_scale < 0:
            raise ParamError(f"generate_vae.prior_scale: must be >= 0, got {self.prior_scale}")
        if self.max_tokens < 0 or self.real_chunks_per_piece < 1:
            raise ParamError("generate_vae.max_tokens must be >= 0 and real_chunks_per_piece >= 1")
        try:
            self.sample_config(0)
        except ValueError as exc:
            raise ParamError(f"generate_vae: {exc}") from None

    def sample_config(self, seed: int, max_tokens: int = 1) -> SampleConfig:
        return SampleConfig(
            temperature=self.temperature,
            top_p=self.top_p,
            guidance=self.guidance,
            max_tokens=self.max_tokens or max_tokens,
            seed=seed,
        )


# -- sampling --------------------------------------------------------------------------------


@torch.inference_mode()
def sample(
    model: LabelVAE,
    tokenizer,
    labels: Sequence[int],
    cfg: SampleConfig,
    prior_scale: float = 1.0,
) -> list[tuple[list[int], dict]]:
    """One piece per label, all decoded as one batch: z from the label's prior component
    (its std times `prior_scale`), then grammar-masked temperature/top-p decoding until EOS
    or `cfg.max_tokens`. Piece i draws from its own generator seeded `cfg.seed + i`. With
    `cfg.guidance` != 1 each piece is also decoded from the same z with label 0
    (unconditional) in the same batch, and the logits mixed by the GPT sampler's
    `mix_guidance`. Returns (ids, stats) per piece."""
    check_vocab(model, tokenizer)
    n_labels = model.config.n_labels
    if any(not 0 <= y < n_labels for y in labels):
        raise ValueError(f"label ids must be in 0..{n_labels - 1}, got {list(labels)}")
    if cfg.max_tokens > model.config.window:
        raise ValueError(
            f"max_tokens {cfg.max_tokens} is longer than the model's window {model.config.window}"
        )
    device = next(model.parameters()).device
    n = len(labels)
    gens = [torch.Generator().manual_seed(cfg.seed + i) for i in range(n)]
    y = torch.tensor(list(labels), dtype=torch.long, device=device)
    z = torch.stack(
        [model.sample_prior(y[i : i + 1], g, prior_scale)[0] for i, g in enumerate(gens)]
    )
    guided = cfg.guidance != 1.0 and any(labels)
    if guided:
        z, y = z.repeat(2, 1), torch.cat([y, torch.zeros_like(y)])
    memory = model.memory(z, y)
    bos = tokenizer.vocab["BOS_None"]
    sampler = TokenSampler(RemiGrammar(tokenizer), cfg, gens, [[] for _ in labels], bos, device)
    cache = model.new_cache()

    def forward(feed: torch.Tensor) -> torch.Tensor:
        with inference_precision(device):
            last = model.decode(feed.repeat(2, 1) if guided else feed, memory, y, cache)
        last = last[:, -1].float()
        return mix_guidance(last, cfg.guidance) if guided else last

    run_steps(sampler, forward, torch.zeros(n, 0, dtype=torch.long, device=device), device)
    return sampler.results([guided and label > 0 for label in labels])


def load(model_dir: str | Path, device: str = "auto") -> tuple[LabelVAE, object, dict]:
    """(model, tokenizer, composer table) of a trained VAE folder, checked against each other."""
    model_dir = Path(model_dir)
    tokenizer_json = model_dir / TOKENIZER_FILE
    if not tokenizer_json.exists():
        raise FileNotFoundError(f"{tokenizer_json} missing: not a trained VAE folder")
    tokenizer = remi.load_tokenizer(tokenizer_json)
    table = read_table(model_dir / COMPOSERS_FILE)
    model = load_vae(model_dir, resolve_device(device))
    try:
        check_vocab(model, tokenizer)
    except ValueError as exc:
        raise ValueError(f"{model_dir}: {exc}") from None
    if model.config.n_labels != table["n_ids"]:
        raise ValueError(
            f"{model_dir}: the model has {model.config.n_labels} labels, "
            f"{COMPOSERS_FILE} {table['n_ids']}"
        )
    return model, tokenizer, table


def generate_file(
    model_dir: str | Path,
    composer: str,
    out: str | Path,
    temperature: float = 1.0,
    top_p: float = 0.95,
    seed: int = 0,
    max_tokens: int = 0,
    device: str = "auto",
    guidance: float = 1.0,
) -> dict:
    """One piece for `composer` (a name from the folder's composers.json, case-insensitive,
    or 'any' for pieces of no known composer) as a MIDI file plus its ids as JSON; returns a
    summary. An unknown name fails with the known ones before any weights load."""
    table = read_table(Path(model_dir) / COMPOSERS_FILE)
    name, cid = composer_id_of(table, composer)
    model, tokenizer, _ = load(model_dir, device)
    cfg = SampleConfig(
        temperature=temperature,
        top_p=top_p,
        guidance=guidance,
        max_tokens=max_tokens or model.config.window,
        seed=seed,
    )
    with sampling_threads(next(model.parameters()).device):
        ((ids, stats),) = sample(model, tokenizer, [cid], cfg)
    path = to_midi(tokenizer, ids, out)
    return {
        "out": str(path),
        "tokens_json": str(path.with_suffix(".json")),
        "model": "vae",
        "composer": name,
        "composer_id": cid,
        "seed": seed,
        "notes": int(symusic.Score(str(path)).note_num()),
        **stats,
    }


# -- stage 13 --------------------------------------------------------------------------------


def evaluate_vae(
    gp: GenerateVAEParams,
    model_dir: str | Path = "models/vae",
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    out_dir: str | Path = "outputs/generated_vae",
    confusion_png: str | Path | None = "metrics/vae_confusion.png",
    latent_png: str | Path | None = "metrics/vae_latent.png",
    genre_dir: str | Path | None = None,
    judge: Judge | None = None,
) -> tuple[dict, Judge | None]:
    """Sample every frequent composer into `out_dir` (old takes removed), then run the
    composer judge (`evaluation.judge`, the same as stage 09's: stage 05's model in
    `genre_dir` when it judges composers), the conditioning suite, the latent-space check
    on held-out windows and `novelty_*` (the longest n-gram shared with training pieces).
    A `judge` passed in is reused (the ablation runner judges every variant with one)."""
    if why := skipped_reason(model_dir):
        raise NothingToLearn(f"the VAE was not trained ({why}): nothing to sample")
    model, tokenizer, table = load(model_dir, gp.device)
    composers = [(c["name"], c["id"]) for c in table["composers"]]
    if not composers:
        raise NothingToLearn(
            "no frequent composer (composers.min_pieces) to condition the VAE on: nothing to "
            "sample or score"
        )
    window = model.config.window
    cfg = gp.sample_config(gp.seed, window)
    if cfg.max_tokens > window:
        raise ParamError(
            f"generate_vae.max_tokens: {cfg.max_tokens} is longer than the model's window {window}"
        )
    jobs = [(name, cid, k) for name, cid in composers for k in range(gp.pieces_per_composer)]
    shutil.rmtree(out_dir, ignore_errors=True)  # no stale takes from a larger earlier run
    generated: list[ev.Piece] = []
    stats_all = []
    t0 = time.perf_counter()
    with sampling_threads(next(model.parameters()).device):
        labels = [cid for _, cid, _ in jobs]
        taken = sample(model, tokenizer, labels, cfg, gp.prior_scale) if jobs else []
    log.info("sampled %d pieces in %.1f s", len(taken), time.perf_counter() - t0)
    for (name, cid, k), (ids, stats) in tqdm(
        list(zip(jobs, taken, strict=True)), desc="write MIDI", unit="piece"
    ):
        to_midi(tokenizer, ids, Path(out_dir) / f"{slug(name)}_{k}.mid")
        generated.append(ev.Piece(ids, cid, None, stats))
        stats_all.append(stats)

    # held out: test and valid, as in stage 09 (valid only picked the best epoch)
    valid = eval_corpus(tokens_dir, manifest, table, "valid")
    held_out = eval_corpus(tokens_dir, manifest, table, "test").joined(valid)
    train = split_pieces(tokens_dir, manifest, table, "train")
    n = gp.real_chunks_per_piece
    real = real_excerpts(held_out, cfg.max_tokens, n)
    train_excerpts = real_excerpts(iter_pieces(train), cfg.max_tokens, n)
    if judge is None:
        valid_excerpts = real_excerpts(valid, cfg.max_tokens, n)
        judge = make_judge(tokenizer, composers, train_excerpts, valid_excerpts, genre_dir, gp.seed)
    metrics = {
        **judge_conditioning(
            tokenizer, judge, generated, real, composers, gp.judge_min_ratio, confusion_png
        ),
        **cond.conditioning(tokenizer, generated, train_excerpts, real, composers, "vae"),
    }
    ids = {cid for _, cid in composers}
    items = [
        (w, c) for w, c in eval_windows(held_out, window, gp.latent_windows_per_piece) if c in ids
    ]
    z = posteriors(model, [w for w, _ in items])
    latent = cond.latent_space(
        z,
        [c for _, c in items],
        {cid: name for name, cid in composers},
        latent_png,
        model.prior_mean.detach().cpu().numpy(),
    )
    keys = primer_keys(model_dir, tokenizer.vocab)  # a key-normalised VAE: compared in C major
    copied = novelty(
        [p.ids for p in generated],
        list(as_trained([p.ids for p in real], keys)),
        as_trained(TokenLists(train), keys),
    )
    tokens = [s["tokens"] for s in stats_all]
    return {
        "pieces_per_composer": gp.pieces_per_composer,
        "max_tokens": cfg.max_tokens,
        "temperature": gp.temperature,
        "top_p": gp.top_p,
        "guidance": gp.guidance,
        "prior_scale": gp.prior_scale,
        "tokens_mean": float(np.mean(tokens)) if tokens else 0.0,
        "bars_mean": float(np.mean([s["bars"] for s in stats_all])) if stats_all else 0.0,
        "repairs_per_piece": float(np.mean([s["repairs"] for s in stats_all]))
        if stats_all
        else 0.0,
        "empty_pieces": sum(1 for p in generated if not p.ids),
        **metrics,
        **latent,
        **copied,
    }, judge
