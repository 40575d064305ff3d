"""Stage 09: sample every frequent composer at every guidance value, and score the takes
against real held-out music (`evaluation`)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from midipipe.core.device import resolve_device, torch_threads
from midipipe.core.errors import NothingToLearn, ParamError
from midipipe.core.reports import skipped_reason
from midipipe.data import composers as C
from midipipe.data.sources.names import slug
from midipipe.evaluation import generated as ev
from midipipe.evaluation.judge import judge_conditioning, make_judge
from midipipe.evaluation.novelty import novelty
from midipipe.generator import COMPOSERS_FILE, TOKENIZER_FILE
from midipipe.generator.corpus import eval_corpus, read_table, split_pieces
from midipipe.generator.gpt import GPT, load_model
from midipipe.generator.keys import as_trained, primer_keys
from midipipe.generator.order import (
    INTERVALS_FILE,
    as_trained_ids,
    in_order,
    interval_log_probs,
    trained_order,
)
from midipipe.generator.sampling import RemiGrammar, Request, SampleConfig, generate_batch, to_midi
from midipipe.tokens import remi
from midipipe.tokens.dataset import Piece, TokenLists, iter_pieces

log = logging.getLogger(__name__)


@dataclass
class GenerateParams:
    """params.yaml `generate:` (stage 09)."""

    pieces_per_composer: int = 4
    guidance: list[float] = field(default_factory=lambda: [1.0, 3.0])
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_tokens: int = 512  # new tokens per piece
    seed_length: int = 0  # primer tokens from a held-out piece of the composer (0 = none)
    seed: int = 1234
    real_chunks_per_piece: int = 4  # real excerpts per piece for the classifier and references
    batch_size: int = 64  # pieces sampled together (one row each)
    device: str = "auto"
    judge_min_ratio: float = 2.0  # judge accuracy / chance on real excerpts for figures to count
    # weight of log P(distance to the nearest pitch at the position and program | composer),
    # counted in the training pieces (stage 08), added to the pitch logits (0 = off)
    chord_prior: float = 1.0

    def __post_init__(self) -> None:
        if self.pieces_per_composer < 1:
            raise ParamError(
                f"generate.pieces_per_composer: must be >= 1, got {self.pieces_per_composer}"
            )
        if not self.guidance:
            raise ParamError("generate.guidance: give at least one value")
        if self.chord_prior < 0:
            raise ParamError(f"generate.chord_prior: must be >= 0, got {self.chord_prior}")
        if self.judge_min_ratio < 1:
            raise ParamError(
                f"generate.judge_min_ratio: must be >= 1 (chance), got {self.judge_min_ratio}"
            )
        if self.seed_length < 0 or self.real_chunks_per_piece < 1 or self.batch_size < 1:
            raise ParamError(
                "generate.seed_length must be >= 0, generate.real_chunks_per_piece and "
                "generate.batch_size >= 1"
            )
        for g in self.guidance:
            try:
                self.sample_config(g, 0)
            except ValueError as exc:
                raise ParamError(f"generate: {exc}") from None

    def sample_config(
        self, guidance: float, seed: int, trained: dict | None = None
    ) -> SampleConfig:
        """The sampling settings, with those the model's training fixes (`trained_sampling`)."""
        return SampleConfig(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            guidance=float(guidance),
            max_tokens=self.max_tokens,
            seed=seed,
            **(trained or {}),
        )


def primer_of(
    ids: Sequence[int], bar_starts: Sequence[int], n: int, grammar: RemiGrammar
) -> list[int]:
    """The first `n` tokens of a piece, cut back to a bar line when at least one bar fits,
    else to the last whole note, so the model continues from a sensible point."""
    if n <= 0:
        return []
    ends = [b for b in bar_starts if 0 < b <= n]
    if len(ids) <= n:
        return np.asarray(ids).tolist()
    if ends:
        return np.asarray(ids[: ends[-1]]).tolist()
    out = np.asarray(ids[:n]).tolist()
    while out and not grammar.is_complete(out[-1]):
        out.pop()
    return out


def sampling_threads(device: torch.device):
    """One CPU thread while sampling: a token step of a small model is a chain of tiny matmuls,
    and OpenMP syncing two threads on each costs more than it saves (10x slower measured on a
    busy 2-core machine)."""
    return torch_threads(1 if device.type == "cpu" else torch.get_num_threads())


@dataclass
class Take:
    """One generated piece."""

    composer: str
    composer_id: int
    guidance: float
    k: int
    path: Path
    ids: list[int]
    n_primer: int
    stats: dict


def generate_for_composers(
    model: GPT,
    tokenizer,
    composers: Sequence[tuple[str, int]],
    gp: GenerateParams,
    out_dir: str | Path,
    primers: dict[int, list[tuple[list[int], list[int]]]] | None = None,
    trained: dict | None = None,
) -> list[Take]:
    """`gp.pieces_per_composer` pieces per (name, id) at every guidance value, written as
    `<composer>_g<guidance>_<k>.mid` (+ .json ids). Take k of every guidance uses the same
    seed (and primer), so guidance values are compared on paired samples. Pieces with the
    same guidance and primer length are sampled together, `gp.batch_size` at a time;
    `trained`: the sampling settings the model's training fixes (`trained_sampling`)."""
    out_dir = Path(out_dir)
    grammar = RemiGrammar(tokenizer)
    groups: dict[tuple[float, int], list[tuple[str, int, int, list[int]]]] = {}
    for name, cid in composers:
        pool = (primers or {}).get(cid) or []
        for k in range(gp.pieces_per_composer):
            primer = primer_of(*pool[k % len(pool)], gp.seed_length, grammar) if pool else []
            for g in gp.guidance:
                groups.setdefault((float(g), len(primer)), []).append((name, cid, k, primer))
    batches = [
        (g, jobs[i : i + gp.batch_size])
        for (g, _), jobs in groups.items()
        for i in range(0, len(jobs), gp.batch_size)
    ]
    takes: list[Take] = []
    bar = tqdm(total=sum(len(jobs) for _, jobs in batches), desc="generate", unit="piece")
    for g, jobs in batches:
        requests = [Request(cid, primer, gp.seed + 1000 * cid + k) for _, cid, k, primer in jobs]
        cfg = gp.sample_config(g, gp.seed, trained)
        results = generate_batch(model, tokenizer, requests, cfg)
        for (name, cid, k, primer), (ids, stats) in zip(jobs, results, strict=True):
            path = to_midi(tokenizer, ids, out_dir / f"{slug(name)}_g{g!r}_{k}.mid")
            takes.append(Take(name, cid, g, k, path, ids, len(primer), stats))
        bar.update(len(jobs))
    bar.close()
    return takes


def trained_sampling(
    model_dir: str | Path, vocab: dict, chord_prior: float, strict: bool = True
) -> dict:
    """The `SampleConfig` fields a model's training fixes, so that stage 09, `midipipe
    generate` and the demo sample one model alike: a bottom-up model (`order.py`) samples each
    chord ascending, and every model gets log P(distance to the nearest pitch at the
    position) per composer id of its training chords (its `INTERVALS_FILE`) weighted by
    `chord_prior`. A model folder without that file (copied from before it existed) is an
    error for the stage (`strict`) and, for the CLI and demo, sampled without the prior."""
    if not (math.isfinite(chord_prior) and chord_prior >= 0):
        raise ParamError(f"generate.chord_prior must be a finite weight >= 0, got {chord_prior}")
    out = {"ascending": True} if trained_order(model_dir, vocab) is not None else {}
    if not chord_prior:
        return out
    path = Path(model_dir) / INTERVALS_FILE
    if not path.exists():
        if strict:
            raise ParamError(
                f"generate.chord_prior: {path} is missing (retrain the generator, or set 0)"
            )
        log.warning("%s is missing: sampling without the chord prior (retrain to get it)", path)
        return out
    try:
        counts = np.asarray(json.loads(path.read_text())["counts"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ParamError(f"{path}: not the chord counts stage 08 writes ({exc})") from None
    if counts.ndim != 2 or counts.shape[1] != 128 or not np.all(counts >= 0):
        raise ParamError(f"{path}: counts must be [composers, 128] and >= 0 (retrain)")
    prior = interval_log_probs(counts)
    return {**out, "chord_prior": tuple(tuple(chord_prior * x for x in row) for row in prior)}


def real_excerpts(pieces: Iterable[Piece], max_tokens: int, per_piece: int) -> list[ev.Piece]:
    """Whole-bar excerpts of real pieces, as long as the generated ones, for scoring."""
    return [
        ev.Piece(x, p.label)
        for p in pieces
        for x in ev.excerpts(p.ids, p.bar_starts, max_tokens, per_piece)
    ]


def evaluate_generator(
    gp: GenerateParams,
    model_dir: str | Path = "models/generator",
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    out_dir: str | Path = "outputs/generated",
    confusion_png: str | Path | None = "metrics/generation_confusion.png",
    genre_dir: str | Path | None = None,
) -> dict:
    """Stage 09: sample every frequent composer at every guidance value into `out_dir` (its
    old takes removed), then score the takes (their new tokens) against real excerpts as
    long of the held-out pieces (test and valid: the test split alone lacks some frequent
    composers of the embedded corpus; neither trains the judge, valid only picked the
    generator's best epoch), which also give the primers: music-metric distances
    (`evaluation.generated`), the composer judge (`evaluation.judge`: stage 05's model in
    `genre_dir` when it judges composers) and `novelty_*`, the longest REMI n-gram each take
    shares with the training pieces, beside held-out excerpts as long."""
    model_dir = Path(model_dir)
    if why := skipped_reason(model_dir):
        raise NothingToLearn(f"the generator was not trained ({why}): nothing to sample")
    tokenizer = remi.load_tokenizer(model_dir / TOKENIZER_FILE)
    model = load_model(model_dir, tokenizer, resolve_device(gp.device))
    table = read_table(model_dir / COMPOSERS_FILE)
    composers = [(c["name"], c["id"]) for c in table["composers"]]
    valid = eval_corpus(tokens_dir, manifest, table, "valid")
    held_out = eval_corpus(tokens_dir, manifest, table, "test").joined(valid)
    keys = primer_keys(model_dir, tokenizer.vocab)  # a key-normalised model: C major primers
    order = trained_order(model_dir, tokenizer.vocab)  # and chords bottom-up, if so trained

    primers = None
    if gp.seed_length:
        primers = {
            cid: [
                (as_trained_ids(i, keys, order), b)
                for i, b, c in zip(
                    held_out.pieces, held_out.bar_starts, held_out.composers, strict=True
                )
                if c == cid
            ]
            for _, cid in composers
        }
    shutil.rmtree(out_dir, ignore_errors=True)  # no stale takes from a larger earlier run
    with sampling_threads(next(model.parameters()).device):
        takes = generate_for_composers(
            model,
            tokenizer,
            composers or [(C.ANY, C.UNCONDITIONAL)],
            gp,
            out_dir,
            primers,
            trained_sampling(model_dir, tokenizer.vocab, gp.chord_prior),
        )
    generated = [ev.Piece(t.ids[t.n_primer :], t.composer_id, t.guidance, t.stats) for t in takes]
    real = real_excerpts(held_out, gp.max_tokens, gp.real_chunks_per_piece)
    train = split_pieces(tokens_dir, manifest, table, "train")
    judge = make_judge(
        tokenizer,
        composers,
        real_excerpts(iter_pieces(train), gp.max_tokens, gp.real_chunks_per_piece),
        real_excerpts(valid, gp.max_tokens, gp.real_chunks_per_piece),
        genre_dir,
        gp.seed,
    )
    return {
        "pieces_per_composer": gp.pieces_per_composer,
        "max_tokens": gp.max_tokens,
        "seed_length": gp.seed_length,
        **ev.evaluate_generation(tokenizer, generated, real, composers),
        **judge_conditioning(
            tokenizer, judge, generated, real, composers, gp.judge_min_ratio, confusion_png
        ),
        **novelty(
            [p.ids for p in generated],
            list(in_order(as_trained([p.ids for p in real], keys), order)),
            in_order(as_trained(TokenLists(train), keys), order),
        ),
    }
