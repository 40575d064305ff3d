"""Sampling speed of the stage-08 GPT (params.yaml's `generator.size` with its `generator.model`
overrides and `generator.context`, random weights) with stage 09's sampling settings: the
per-token sampler the project had before (`baseline_sampling.py`) against the tensor one, in
the same run.

Prints one JSON line: tokens/s of one cached stream, one guided stream, and `--rows` guided
pieces as the rows of one batch (tokens of all rows per second), for each path, and the new
one's ratio to the old; then where a token's time goes in each path (model forward, grammar
mask and state, repetition penalty, top-k/p and the draw, other), from a second run with
timers around those calls; then `forward_us`, one cached step of the module forward (what
the old path calls) against `GPT.decode_step` (the tensor path's) alone, at 1, 2 and
2 x `--rows` rows with a full window of keys; and the 1-minute load average at the start and
the end. The `*_chords` cases run the tensor path with stage 09's chord prior
(`generate.chord_prior`, a table per composer), `chords_cost_*` their tokens/s over the
same case without it. Targets: >= 2,000 tokens/s for one stream, >= 6,000 tokens/s for 32
guided rows.
Shared cores are noisy: runs are interleaved, the best of `--repeats` counts, and beside
wall-clock tokens/s (`*_tok_s`) the JSON gives tokens per second of the sampling thread's CPU
time (`*_cpu_tok_s`; the split and `forward_us` are in CPU time too), which time spent
waiting for a busy core does not inflate. `--train` instead measures training tokens/s
(forward, backward, AdamW).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import baseline_sampling as old
import torch
import yaml

from midipipe.core import params
from midipipe.generator import sampling as new
from midipipe.generator.gpt import GPT
from midipipe.generator.sampling import Request, SampleConfig
from midipipe.generator.train import PROFILES, GeneratorParams, build_model
from midipipe.tokens.remi import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
N_COMPOSERS = 12
PATHS = {"baseline": old.generate_batch, "tensor": new.generate_batch}
# the calls timed per path: (owner, attribute) -> bucket
TIMED = {
    "baseline": {
        (old.RemiGrammar, "allowed"): "grammar",
        (old.RemiGrammar, "step"): "grammar",
        (old, "choose"): "sample",  # applies the penalty too (its lists are built in `other`)
    },
    "tensor": {
        (new.GrammarState, "allowed"): "grammar",
        (new.GrammarState, "step"): "grammar",
        (new.GrammarState, "chord_bias"): "chords",
        (new.TokenSampler, "penalized"): "penalty",
        (new, "choose"): "sample",
    },
}


def stage_params() -> tuple[dict, dict]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return params["generator"], params["generate"]


def stage_model(tokenizer) -> GPT:
    """Stage 08's GPT for the active profile (random weights: speed does not depend on them)."""
    p = params.profiled(GeneratorParams, ROOT / "params.yaml", "generator", PROFILES)
    torch.manual_seed(0)
    return build_model(p, tokenizer, N_COMPOSERS).eval()


def chord_prior() -> tuple[tuple[float, ...], ...]:
    """A chord prior of the stage's shape, one row per composer id: log P(distance) falling
    with the distance, as in real chords (its values do not change the time it takes)."""
    logp = torch.log_softmax(-torch.arange(128.0) / 4, 0).tolist()
    return (tuple(logp),) * N_COMPOSERS


def sample_config(
    tokens: int, guidance: float, penalty: float | None, chords: bool = False
) -> SampleConfig:
    _, gp = stage_params()
    return SampleConfig(
        chord_prior=chord_prior() if chords else (),
        temperature=gp["temperature"],
        top_k=gp["top_k"],
        top_p=gp["top_p"],
        repetition_penalty=gp["repetition_penalty"] if penalty is None else penalty,
        guidance=guidance,
        max_tokens=tokens,
        min_tokens=tokens,
    )


@contextlib.contextmanager
def timers(path: str, model: GPT):
    """Wall time per bucket of the calls in TIMED[path] and of the model's forward."""
    spent: dict[str, float] = defaultdict(float)

    def timed(fn, bucket):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[bucket] += time.thread_time() - t0

        return wrapper

    patched = [(owner, name, getattr(owner, name)) for owner, name in TIMED[path]]
    for (owner, name), bucket in TIMED[path].items():
        setattr(owner, name, timed(getattr(owner, name), bucket))
    model.forward = timed(model.forward, "forward")
    model.decode_step = timed(model.decode_step, "forward")  # the tensor path's cached step
    try:
        yield spent
    finally:
        del model.forward, model.decode_step
        for owner, name, fn in patched:
            setattr(owner, name, fn)


def tok_s(path: str, model: GPT, tokenizer, rows: int, cfg: SampleConfig) -> tuple[float, float]:
    """Tokens (all rows) per second of wall time and per second of this thread's CPU time."""
    requests = [Request(1 + i % (N_COMPOSERS - 1), (), i) for i in range(rows)]
    t0, c0 = time.perf_counter(), time.thread_time()
    out = PATHS[path](model, tokenizer, requests, cfg)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert all(stats["tokens"] == cfg.max_tokens for _, stats in out)
    return rows * cfg.max_tokens / wall, rows * cfg.max_tokens / cpu


def split(path: str, model: GPT, tokenizer, rows: int, cfg: SampleConfig) -> dict:
    """CPU microseconds per token step by bucket, `other` being the rest of the step."""
    requests = [Request(1 + i % (N_COMPOSERS - 1), (), i) for i in range(rows)]
    with timers(path, model) as spent:
        t0 = time.thread_time()
        PATHS[path](model, tokenizer, requests, cfg)
        total = time.thread_time() - t0
    buckets = ("forward", "grammar", "chords", "penalty", "sample")
    us = {b: 1e6 * spent[b] / cfg.max_tokens for b in buckets}
    us["other"] = 1e6 * total / cfg.max_tokens - sum(us.values())
    return {k: round(v, 1) for k, v in us.items()}


@torch.inference_mode()
def forward_us(model: GPT, rows: int, repeats: int, steps: int = 64) -> dict[str, float]:
    """CPU µs of one cached step of `rows` rows, after the window filled: the module forward
    against `decode_step`, interleaved."""
    ids = torch.randint(4, model.config.vocab_size, (rows, 1), generator=torch.Generator())
    composer = torch.ones(rows, dtype=torch.long)
    steps_of = {
        "module": lambda cache: model(ids, composer, cache, last_only=True),
        "decode_step": lambda cache: model.decode_step(ids, composer, cache),
    }
    caches = {name: model.new_cache() for name in steps_of}
    best = dict.fromkeys(steps_of, float("inf"))
    for name, step in steps_of.items():
        for _ in range(model.config.context + 8):
            step(caches[name])
    for _ in range(repeats):
        for name, step in steps_of.items():
            t0 = time.thread_time()
            for _ in range(steps):
                step(caches[name])
            best[name] = min(best[name], 1e6 * (time.thread_time() - t0) / steps)
    return {k: round(v, 1) for k, v in best.items()}


def sampling(args: argparse.Namespace) -> dict:
    load0 = os.getloadavg()[0]
    tokenizer = make_tokenizer()
    model = stage_model(tokenizer)
    batch = f"batch{args.rows}_guided"
    cases = {  # rows, guidance, with the chord prior
        "stream": (1, 1.0, False),
        "guided": (1, args.guidance, False),
        batch: (args.rows, args.guidance, False),
        "stream_chords": (1, 1.0, True),
        f"{batch}_chords": (args.rows, args.guidance, True),
    }
    for path in PATHS:  # warm-up
        tok_s(path, model, tokenizer, 2, sample_config(16, args.guidance, args.penalty))
    best: dict[str, float] = defaultdict(float)
    for _ in range(args.repeats):
        for case, (rows, guidance, chords) in cases.items():
            cfg = sample_config(args.tokens, guidance, args.penalty, chords)
            # interleaved, so load changes hit both paths alike (the baseline has no prior)
            for path in ("tensor",) if chords else PATHS:
                wall, cpu = tok_s(path, model, tokenizer, rows, cfg)
                best[f"{path}_{case}_tok_s"] = max(best[f"{path}_{case}_tok_s"], wall)
                best[f"{path}_{case}_cpu_tok_s"] = max(best[f"{path}_{case}_cpu_tok_s"], cpu)
    cfg0 = sample_config(args.tokens, 1.0, args.penalty)
    out = {
        "bench": "sampling",
        "model": params.profile(ROOT / "params.yaml"),
        "params": model.n_params(),
        "d_model": model.config.d_model,
        "n_layer": model.config.n_layer,
        "context": model.config.context,
        "threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "guidance": args.guidance,
        "top_k": cfg0.top_k,
        "top_p": cfg0.top_p,
        "repetition_penalty": cfg0.repetition_penalty,
        "repeats": args.repeats,
        **{k: round(v, 1) for k, v in best.items()},
    }
    for case, (_, _, chords) in cases.items():
        for kind in ("tok_s", "cpu_tok_s"):
            tag = "_cpu" if kind == "cpu_tok_s" else ""
            if chords:
                plain = best[f"tensor_{case.removesuffix('_chords')}_{kind}"]
                out[f"chords_cost_{case}{tag}"] = round(best[f"tensor_{case}_{kind}"] / plain, 2)
            else:
                ratio = best[f"tensor_{case}_{kind}"] / best[f"baseline_{case}_{kind}"]
                out[f"speedup_{case}{tag}"] = round(ratio, 2)
    for kind in ("tok_s", "cpu_tok_s"):
        tag = "_cpu" if kind == "cpu_tok_s" else ""
        for chords in ("", "_chords"):
            out[f"pass_stream{chords}_2000{tag}"] = best[f"tensor_stream{chords}_{kind}"] >= 2000
            rows_s = best[f"tensor_{batch}{chords}_{kind}"]
            out[f"pass_{batch}{chords}_6000{tag}"] = rows_s >= 6000
    for case, (rows, guidance, chords) in cases.items():
        cfg = sample_config(args.split_tokens, guidance, args.penalty, chords)
        for path in ("tensor",) if chords else PATHS:
            out[f"{path}_{case}_us_per_step"] = split(path, model, tokenizer, rows, cfg)
    out["forward_us"] = {
        f"rows{rows}": forward_us(model, rows, args.repeats) for rows in (1, 2, 2 * args.rows)
    }
    out["load_avg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return out


def training(args: argparse.Namespace) -> dict:
    tokenizer = make_tokenizer()
    model = stage_model(tokenizer).train()
    ctx, batch = model.config.context, args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tokenizer.vocab), (batch, ctx + 1), generator=gen)
    composer = torch.randint(0, N_COMPOSERS, (batch,), generator=gen)

    def step() -> None:
        logits, _ = model(ids[:, :-1], composer)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), ids[:, 1:].flatten(), label_smoothing=0.1
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0
    return {
        "bench": "train",
        "model": params.profile(ROOT / "params.yaml"),
        "params": model.n_params(),
        "threads": torch.get_num_threads(),
        "batch": f"{batch}x{ctx}",
        "steps": args.steps,
        "step_s": round(elapsed / args.steps, 3),
        "train_tok_s": round(batch * ctx * args.steps / elapsed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--split-tokens", type=int, default=256, help="tokens of the timed run")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument(
        "--penalty",
        type=float,
        default=None,
        help="repetition penalty (default: params.yaml generate.repetition_penalty)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: one-token steps are too small to share; stage 09 uses 1)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per case, best one counts")
    ap.add_argument("--rows", type=int, default=32, help="guided pieces sampled as one batch")
    ap.add_argument("--train", action="store_true", help="measure training tokens/s instead")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(json.dumps(training(args) if args.train else sampling(args)))


if __name__ == "__main__":
    main()
