"""The composer-conditioned generator end to end: training (stage 08), sampling per composer
(stage 09) and the `midipipe generate` command.

A trained generator folder is self-contained: `model.safetensors` + `config.json` (the GPT),
`composers.json` (names -> conditioning ids, as trained) and `tokenizer.json` (the REMI
vocabulary the ids mean), so it can be copied elsewhere and still sample.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import symusic
import torch
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from midipipe import composers as C
from midipipe import evaluation as ev
from midipipe import remi
from midipipe.midi import BadMidi, load_score
from midipipe.models import generator_data as gd
from midipipe.models.gpt import GPT, GPTConfig, load_model, save_model
from midipipe.organize import slug
from midipipe.params import ParamError, TrainParams
from midipipe.sampling import RemiGrammar, SampleConfig, generate, to_midi
from midipipe.shards import tokens_by_split, write_json
from midipipe.training import Fit, fit, resolve_device

log = logging.getLogger(__name__)

SIZES = ("cpu_default", "gpu_profile")
COMPOSERS_FILE = "composers.json"
TOKENIZER_FILE = "tokenizer.json"
ANY = "any"  # the CLI's name for the unconditional id


# -- params ----------------------------------------------------------------------------------


@dataclass
class GeneratorParams:
    """params.yaml `generator:` (stage 08)."""

    size: str = "cpu_default"  # a GPTConfig profile: cpu_default | gpu_profile
    context: int = 512  # training window = the most tokens one token attends to
    composer_dropout: float = 0.6  # P(composer -> unconditional): what guidance contrasts
    token_dropout: float = 0.01
    label_smoothing: float = 0.1
    grad_accum: int = 1  # micro-batches per optimizer step (recomputed: memory of one)
    max_windows: int = 0  # training windows per epoch (0 = as many as the corpus fills)
    eval_windows: int = 0  # validation windows per epoch (0 = all)
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides (n_layer, ...)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.size in SIZES, "size", f"one of {', '.join(SIZES)}"),
            (self.context >= 8, "context", ">= 8"),
            (0 <= self.composer_dropout <= 1, "composer_dropout", "in [0, 1]"),
            (0 <= self.token_dropout < 1, "token_dropout", "in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.grad_accum >= 1, "grad_accum", ">= 1"),
            (self.max_windows >= 0, "max_windows", ">= 0 (0 = no cap)"),
            (self.eval_windows >= 0, "eval_windows", ">= 0 (0 = all)"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ParamError(f"generator.{key}: must be {want}, got {getattr(self, key)!r}")
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        for key in self.model:
            if key not in fields or key in ("vocab_size", "pad_id", "n_composers", "context"):
                raise ParamError(f"generator.model.{key}: not a GPTConfig override")


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
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.pieces_per_composer < 1:
            raise ParamError(
                f"generate.pieces_per_composer: must be >= 1, got {self.pieces_per_composer}"
            )
        if not self.guidance:
            raise ParamError("generate.guidance: give at least one value")
        if self.seed_length < 0 or self.real_chunks_per_piece < 1:
            raise ParamError(
                "generate.seed_length must be >= 0 and generate.real_chunks_per_piece >= 1"
            )
        for g in self.guidance:
            try:
                self.sample_config(g, 0)
            except ValueError as exc:
                raise ParamError(f"generate: {exc}") from None

    def sample_config(self, guidance: float, seed: int) -> SampleConfig:
        return SampleConfig(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            guidance=float(guidance),
            max_tokens=self.max_tokens,
            seed=seed,
        )


# -- corpus ----------------------------------------------------------------------------------


@dataclass
class Corpus:
    """One split's REMI pieces and each one's conditioning id."""

    piece_ids: list[str] = field(default_factory=list)
    pieces: list[list[int]] = field(default_factory=list)
    bar_starts: list[list[int]] = field(default_factory=list)
    composers: list[int] = field(default_factory=list)


def load_corpus(tokens_dir: str | Path, manifest: str | Path, table: dict) -> dict[str, Corpus]:
    """{split: Corpus}; a piece's id comes from its manifest composer under `table`."""
    rows = pq.read_table(manifest, columns=["piece_id", "composer"]).to_pylist()
    composer_of = {r["piece_id"]: C.id_of(table, r["composer"]) for r in rows}
    out: dict[str, Corpus] = {}
    for split, items in tokens_by_split(tokens_dir, manifest).items():
        corpus = out.setdefault(split, Corpus())
        for pid, ids, bars in items:
            if ids:
                corpus.piece_ids.append(pid)
                corpus.pieces.append(ids)
                corpus.bar_starts.append(bars)
                corpus.composers.append(composer_of[pid])
    return out


def read_table(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# -- training (stage 08) ---------------------------------------------------------------------


def accumulated_loss(
    model: GPT, batch: dict, label_smoothing: float, grad_accum: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a batch of `grad_accum` micro-batches, token-weighted as one big batch.

    `training.fit` takes one backward per step, so accumulation happens inside it: each
    micro-batch's forward is checkpointed, and the backward recomputes them one at a time,
    so memory holds one micro-batch's activations (at the price of one extra forward).
    """
    pad = model.config.pad_id
    n_tokens = int((batch["targets"] != pad).sum())
    if grad_accum == 1:
        value, logs = gd.loss(model, batch, label_smoothing)
        return value, {**logs, "tokens": float(n_tokens)}
    total, nll = None, 0.0
    for part in zip(
        *(batch[k].chunk(grad_accum) for k in ("inputs", "targets", "composer")), strict=True
    ):
        micro = dict(zip(("inputs", "targets", "composer"), part, strict=True))
        share = int((micro["targets"] != pad).sum()) / max(1, n_tokens)
        if share == 0:
            continue
        value, logs = checkpoint(gd.loss, model, micro, label_smoothing, use_reentrant=False)
        total = value * share if total is None else total + value * share
        nll += logs["nll"] * share
    return total, {"nll": nll, "tokens": float(n_tokens)}


def build_model(p: GeneratorParams, tokenizer, n_composers: int) -> GPT:
    cfg = getattr(GPTConfig, p.size)(
        **{
            **p.model,
            "vocab_size": len(tokenizer.vocab),
            "pad_id": tokenizer.pad_token_id,
            "n_composers": n_composers,
            "context": p.context,
        }
    )
    return GPT(cfg)


def save_generator(model: GPT, out_dir: str | Path, table: dict, tokenizer_json: str | Path):
    """The GPT plus the composer table and tokenizer it was trained with."""
    out_dir = Path(out_dir)
    save_model(model, out_dir)
    write_json(out_dir / COMPOSERS_FILE, table)
    shutil.copyfile(tokenizer_json, out_dir / TOKENIZER_FILE)


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
    data = load_corpus(tokens_dir, manifest, table)
    train_set, valid_set = data["train"], data["valid"]
    if not train_set.pieces:
        raise ParamError(f"no training pieces in {tokens_dir} (manifest split 'train')")
    if not valid_set.pieces:
        log.warning("no validation pieces: validating on the first 32 training pieces")
        valid_set = Corpus(*(getattr(train_set, f.name)[:32] for f in dataclasses.fields(Corpus)))
    wcfg = gd.WindowConfig.for_tokenizer(
        tokenizer,
        p.context,
        composer_dropout=p.composer_dropout,
        token_dropout=p.token_dropout,
        max_windows=p.max_windows,
    )
    torch.manual_seed(tp.seed)
    model = build_model(p, tokenizer, table["n_ids"])
    step_batch = tp.batch_size * p.grad_accum

    def evaluate(m: GPT) -> dict[str, float]:  # timed, so train tokens/s leaves it out
        t0 = time.perf_counter()
        out = gd.evaluate(
            m, valid_set.pieces, valid_set.composers, wcfg, tp.batch_size, p.eval_windows
        )
        return {**out, "valid_s": round(time.perf_counter() - t0, 2)}

    job = Fit(
        model=model,
        train_batches=lambda epoch, rng: gd.train_batches(
            train_set.pieces, train_set.composers, wcfg, step_batch, epoch, rng
        ),
        steps_per_epoch=gd.steps_per_epoch(train_set.pieces, wcfg, step_batch),
        loss=lambda m, b: accumulated_loss(m, b, p.label_smoothing, p.grad_accum),
        evaluate=evaluate,
    )
    n_tokens = sum(len(x) for x in train_set.pieces)
    log.info(
        "generator: %d parameters, %d train pieces (%d tokens), %d valid, %d steps/epoch",
        model.n_params(),
        len(train_set.pieces),
        n_tokens,
        len(valid_set.pieces),
        job.steps_per_epoch,
    )
    fit(
        job,
        tp,
        resume_dir,
        save_best=lambda m: save_generator(m, out_dir, table, tokenizer_json),
        fingerprint={
            "generator": dataclasses.asdict(p),
            "pieces": len(train_set.pieces),
            "tokens": n_tokens,
        },
    )
    return job, training_metrics(job, model, p, train_set, valid_set, tp)


def training_metrics(
    job: Fit, model: GPT, p: GeneratorParams, train_set: Corpus, valid_set: Corpus, tp: TrainParams
) -> dict:
    best = min(job.history, key=lambda h: h["valid_loss"])
    train_s = sum(h["epoch_s"] - h.get("valid_s", 0.0) for h in job.history)
    tokens = sum(h.get("train_tokens", 0.0) for h in job.history) * job.steps_per_epoch
    return {
        "best_valid_loss": best["valid_loss"],
        "best_valid_ppl": best["valid_ppl"],
        "best_epoch": best["epoch"],
        "epochs": len(job.history),
        "final_train_nll": job.history[-1].get("train_nll", float("nan")),
        "params": model.n_params(),
        "size": p.size,
        "context": p.context,
        "effective_batch": tp.batch_size * p.grad_accum,
        "steps_per_epoch": job.steps_per_epoch,
        "train_pieces": len(train_set.pieces),
        "train_corpus_tokens": sum(len(x) for x in train_set.pieces),
        "valid_pieces": len(valid_set.pieces),
        "train_tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else 0.0,
        "device": str(resolve_device(tp.device)),
    }


# -- sampling --------------------------------------------------------------------------------


def primer_of(
    ids: Sequence[int], bar_starts: Sequence[int], n: int, grammar: RemiGrammar
) -> list[int]:
    """The first `n` tokens of a piece, cut back to a bar line when at least one bar fits,
    else to the last whole note, so the model continues from a sensible point."""
    if n <= 0:
        return []
    ends = [b for b in bar_starts if 0 < b <= n]
    if len(ids) <= n:
        return list(ids)
    if ends:
        return list(ids[: ends[-1]])
    out = list(ids[:n])
    while out and not grammar.is_complete(out[-1]):
        out.pop()
    return out


@contextlib.contextmanager
def sampling_threads(device: torch.device):
    """One CPU thread while sampling: a token step of a small model is a chain of tiny matmuls,
    and OpenMP syncing two threads on each costs more than it saves (10x slower measured on a
    busy 2-core machine)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    primers: dict[int, list[list[int]]] | None = None,
) -> list[Take]:
    """`gp.pieces_per_composer` pieces per (name, id) at every guidance value, written as
    `<composer>_g<guidance>_<k>.mid` (+ .json ids). Take k of every guidance uses the same
    seed (and primer), so guidance values are compared on paired samples."""
    out_dir = Path(out_dir)
    grammar = RemiGrammar(tokenizer)
    takes: list[Take] = []
    jobs = [
        (name, cid, g, k)
        for name, cid in composers
        for g in gp.guidance
        for k in range(gp.pieces_per_composer)
    ]
    for name, cid, g, k in tqdm(jobs, desc="generate", unit="piece"):
        pool = (primers or {}).get(cid) or []
        primer = primer_of(*pool[k % len(pool)], gp.seed_length, grammar) if pool else []
        cfg = gp.sample_config(g, gp.seed + 1000 * cid + k)
        ids, stats = generate(model, tokenizer, cid, primer, cfg)
        path = to_midi(tokenizer, ids, out_dir / f"{slug(name)}_g{float(g)!r}_{k}.mid")
        takes.append(Take(name, cid, float(g), k, path, ids, len(primer), stats))
    return takes


def test_pieces_of(
    tokens_dir: str | Path, manifest: str | Path, composer: str | None
) -> list[tuple[list[int], list[int]]]:
    """(ids, bar_starts) of the test-split pieces of one composer (any composer if None),
    reading only their rows from the token shards."""
    rows = pq.read_table(manifest, columns=["piece_id", "split", "composer"]).to_pylist()
    wanted = {
        r["piece_id"]
        for r in rows
        if r["split"] == "test" and (composer is None or r["composer"] == composer)
    }
    out: list[tuple[list[int], list[int]]] = []
    for part in sorted(Path(tokens_dir).glob("part-*.parquet")) if wanted else []:
        rows = pq.read_table(part, filters=[("piece_id", "in", sorted(wanted))]).to_pylist()
        out += [(r["ids"], r["bar_starts"]) for r in rows if r["ids"]]
    return out


def real_excerpts(corpus: Corpus, max_tokens: int, per_piece: int) -> list[ev.Piece]:
    """Whole-bar excerpts of real pieces, as long as the generated ones, for scoring."""
    return [
        ev.Piece(x, cid)
        for ids, bars, cid in zip(corpus.pieces, corpus.bar_starts, corpus.composers, strict=True)
        for x in ev.excerpts(ids, bars, max_tokens, per_piece)
    ]


def evaluate_generator(
    gp: GenerateParams,
    model_dir: str | Path = "models/generator",
    tokens_dir: str | Path = "data/tokens/remi",
    manifest: str | Path = "data/manifest.parquet",
    out_dir: str | Path = "outputs/generated",
    confusion_png: str | Path | None = "metrics/generation_confusion.png",
) -> dict:
    """Stage 09: sample every frequent composer at every guidance value into `out_dir` (its
    old takes removed), then score the takes against real held-out excerpts."""
    model_dir = Path(model_dir)
    tokenizer = remi.load_tokenizer(model_dir / TOKENIZER_FILE)
    model = load_model(model_dir, tokenizer, resolve_device(gp.device))
    table = read_table(model_dir / COMPOSERS_FILE)
    composers = [(c["name"], c["id"]) for c in table["composers"]]
    real = load_corpus(tokens_dir, manifest, table)
    held_out = real["test"] if real["test"].pieces else real["valid"]
    primers = None
    if gp.seed_length:
        primers = {
            cid: [
                (i, b)
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
            model, tokenizer, composers or [(ANY, C.UNCONDITIONAL)], gp, out_dir, primers
        )
    length = gp.seed_length + gp.max_tokens
    metrics = ev.evaluate_generation(
        tokenizer,
        [ev.Piece(t.ids[t.n_primer :], t.composer_id, t.guidance, t.stats) for t in takes],
        real_excerpts(real["train"], length, gp.real_chunks_per_piece),
        real_excerpts(held_out, length, gp.real_chunks_per_piece),
        composers,
        confusion_png,
        gp.seed,
    )
    return {
        "pieces_per_composer": gp.pieces_per_composer,
        "max_tokens": gp.max_tokens,
        "seed_length": gp.seed_length,
        **metrics,
    }


# -- the `midipipe generate` command ---------------------------------------------------------


@dataclass
class GenerateOptions:
    """Arguments of `midipipe generate`."""

    composer: str
    out: str = "generated.mid"
    guidance: float = 3.0
    temperature: float = 0.9
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.02
    seed_length: int = 128
    max_tokens: int = 1024
    max_bars: int = 0
    seed: int = 0
    model_dir: str = "models/generator"
    tokenizer: str | None = None  # default: the model folder's, else data/tokens/remi's
    primer: str | None = None
    data_dir: str = "data"
    device: str = "auto"
    interactive: bool = False
    progress: bool = True


def _known_names(table: dict) -> list[str]:
    return [c["name"] for c in table["composers"]] + [ANY]


def composer_id_of(table: dict, name: str) -> tuple[str, int]:
    """(canonical name, id) for a composer name (case-insensitive); unknown names fail with
    the list of known ones."""
    if name.lower() == ANY:
        return ANY, C.UNCONDITIONAL
    for entry in table["composers"]:
        if entry["name"].lower() == name.lower():
            return entry["name"], entry["id"]
    known = ", ".join(_known_names(table))
    raise ValueError(f"unknown composer {name!r}; known: {known}")


def _tokenizer_path(opts: GenerateOptions) -> Path:
    if opts.tokenizer:
        return Path(opts.tokenizer)
    own = Path(opts.model_dir) / TOKENIZER_FILE
    return own if own.exists() else Path(opts.data_dir) / "tokens" / "remi" / TOKENIZER_FILE


def _primer(
    opts: GenerateOptions, composer: str, tokenizer, grammar: RemiGrammar
) -> tuple[list[int], str]:
    """Primer ids and where they came from."""
    if opts.primer:
        path = Path(opts.primer)
        try:
            ids, bars = remi.encode(tokenizer, load_score(path))
        except (BadMidi, OSError) as exc:
            raise ValueError(f"cannot use primer {path}: {exc}") from None
        n = opts.seed_length or len(ids)
        return primer_of(ids.tolist(), bars.tolist(), n, grammar), str(path)
    if opts.seed_length == 0:
        return [], "none"
    data = Path(opts.data_dir)
    manifest, tokens = data / "manifest.parquet", data / "tokens" / "remi"
    if not manifest.exists() or not tokens.is_dir():
        raise ValueError(
            f"--seed-length {opts.seed_length} primes from a held-out piece in "
            f"{manifest} and {tokens}, which are missing: pass --primer FILE.mid "
            "or --seed-length 0"
        )
    pool = test_pieces_of(tokens, manifest, None if composer == ANY else composer)
    if not pool:
        raise ValueError(
            f"no test-split piece of {composer} in {manifest}: pass --primer "
            "FILE.mid or --seed-length 0"
        )
    pick = torch.randint(len(pool), (1,), generator=torch.Generator().manual_seed(opts.seed))
    ids, bars = pool[int(pick)]
    return primer_of(ids, bars, opts.seed_length, grammar), f"test piece of {composer}"


def _one_take(model: GPT, tokenizer, opts: GenerateOptions, out: Path) -> dict:
    table = read_table(Path(opts.model_dir) / COMPOSERS_FILE)
    name, cid = composer_id_of(table, opts.composer)
    cfg = SampleConfig(
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        repetition_penalty=opts.repetition_penalty,
        guidance=opts.guidance,
        max_tokens=opts.max_tokens,
        max_bars=opts.max_bars,
        seed=opts.seed,
    )
    grammar = RemiGrammar(tokenizer)
    primer, source = _primer(opts, name, tokenizer, grammar)
    bar = tqdm(total=cfg.max_tokens, desc=f"sampling {name}", unit="tok", disable=not opts.progress)

    def tick(*_) -> None:  # one forward per token; a hook returning None keeps the output
        bar.update(1)

    hook = model.register_forward_hook(tick)
    try:
        with sampling_threads(next(model.parameters()).device):
            ids, stats = generate(model, tokenizer, cid, primer, cfg)
    finally:
        hook.remove()
        bar.close()
    path = to_midi(tokenizer, ids, out)
    notes = symusic.Score(str(path)).note_num()
    return {
        "out": str(path),
        "tokens_json": str(path.with_suffix(".json")),
        "composer": name,
        "composer_id": cid,
        "guidance": opts.guidance,
        "seed": opts.seed,
        "primer": source,
        "primer_tokens": len(primer),
        "notes": int(notes),
        **stats,
    }


SETTABLE = {
    "composer": str,
    "guidance": float,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "repetition_penalty": float,
    "max_tokens": int,
    "max_bars": int,
    "seed_length": int,
    "seed": int,
    "primer": str,
}
INTERACTIVE_HELP = (
    f"enter: another take | key=value ... ({', '.join(SETTABLE)}): change and sample | q: quit"
)


def _apply(opts: GenerateOptions, line: str) -> GenerateOptions:
    """Options changed by an interactive `key=value ...` line."""
    changes: dict[str, Any] = {}
    for item in line.split():
        key, sep, value = item.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in SETTABLE:
            raise ValueError(f"cannot set {item!r}: {INTERACTIVE_HELP}")
        try:
            changes[key] = SETTABLE[key](value)
        except ValueError:
            raise ValueError(f"{key}: not a {SETTABLE[key].__name__}: {value!r}") from None
    return dataclasses.replace(opts, **changes)


def generate_command(opts: GenerateOptions, ask: Callable[[str], str] = input) -> dict:
    """Sample one piece (or, with `interactive`, take after take) and return a summary.

    Errors a user can fix (an unknown composer, guidance < 1, an unreadable primer, a
    checkpoint from another vocabulary) are ValueError/FileNotFoundError with the reason.
    """
    tokenizer_json = _tokenizer_path(opts)
    if not tokenizer_json.exists():
        raise FileNotFoundError(f"tokenizer {tokenizer_json} missing (pass --tokenizer)")
    tokenizer = remi.load_tokenizer(tokenizer_json)
    table = read_table(Path(opts.model_dir) / COMPOSERS_FILE)
    composer_id_of(table, opts.composer)  # fail on a bad name before loading weights
    try:
        model = load_model(opts.model_dir, tokenizer, resolve_device(opts.device))
    except ValueError as exc:
        raise ValueError(f"{opts.model_dir} does not match {tokenizer_json}: {exc}") from None
    out = Path(opts.out)
    summary = _one_take(model, tokenizer, opts, out)
    if not opts.interactive:
        return summary
    takes = [summary]
    print(json.dumps(summary))
    print(INTERACTIVE_HELP)
    while True:
        try:
            line = ask("generate> ").strip()
        except EOFError:
            break
        if line.lower() in ("q", "quit", "exit"):
            break
        try:
            opts = _apply(opts, line) if line else dataclasses.replace(opts, seed=opts.seed + 1)
            path = out.with_name(f"{out.stem}_{len(takes) + 1}{out.suffix}")
            takes.append(_one_take(model, tokenizer, opts, path))
            print(json.dumps(takes[-1]))
        except ValueError as exc:
            print(f"error: {exc}")
    return {**takes[-1], "takes": len(takes)}


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    """`midipipe generate ...`; the parsed args go to `cmd_generate`."""
    d = GenerateOptions(composer="")
    g = subparsers.add_parser("generate", help="sample a piece from the composer-conditioned GPT")
    g.add_argument(
        "--composer",
        required=True,
        help=f"composer name from <model-dir>/{COMPOSERS_FILE}, or '{ANY}'",
    )
    g.add_argument("-o", "--out", default=d.out, help="output MIDI (default: %(default)s)")
    for flag, kind, help_ in (
        ("--guidance", float, "classifier-free guidance, >= 1 (1 = none)"),
        ("--temperature", float, "softmax temperature"),
        ("--top-k", int, "keep the k most likely tokens (0 = off)"),
        ("--top-p", float, "nucleus mass (1 = off)"),
        ("--repetition-penalty", float, "on recent pitches, >= 1 (1 = off)"),
        ("--seed-length", int, "primer tokens (0 = no primer)"),
        ("--max-tokens", int, "new tokens at most"),
        ("--max-bars", int, "bars at most, primer included (0 = no limit)"),
        ("--seed", int, "random seed (sampling and primer choice)"),
    ):
        dest = flag[2:].replace("-", "_")
        g.add_argument(
            flag, type=kind, default=getattr(d, dest), help=f"{help_} (default: %(default)s)"
        )
    g.add_argument("--model-dir", default=d.model_dir, help="trained generator folder")
    g.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (default: the model folder's, else data/tokens/remi's)",
    )
    g.add_argument(
        "--primer",
        default=None,
        help="prime with this MIDI file (default: a test-split piece of the composer)",
    )
    g.add_argument("--data-dir", default=d.data_dir, help="where held-out primers come from")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    g.add_argument("--interactive", action="store_true", help="sample take after take")
    g.set_defaults(func=cmd_generate)
    return g


def cmd_generate(args) -> None:
    names = {f.name for f in dataclasses.fields(GenerateOptions)}
    opts = GenerateOptions(**{k: v for k, v in vars(args).items() if k in names})
    print(json.dumps(generate_command(opts)))
