"""Sampling speed of the cpu_default GPT (random weights): KV cache, and the cost of guidance.

Prints one JSON line. Targets: the KV cache >= 5x the tokens/s of recomputing the last
`context` tokens at each step, over 1024 tokens; classifier-free guidance (one batch of two
streams) <= 2x the time of unguided sampling. The no-cache run is most of the time (about a
minute on 2 free cores); `--nocache-tokens N` measures it on the first N tokens only, which
makes the reported speedup a lower bound (the JSON says so).

`--rows N` also samples N guided pieces as the rows of one batch, as stage 09 does
(`batch_guided_tok_s`: tokens of all rows per second). `--train` instead measures training
tokens/s (forward, backward, AdamW) of cpu_default.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from midipipe.generator.gpt import GPT, GPTConfig
from midipipe.generator.sampling import Request, SampleConfig, generate, generate_batch
from midipipe.tokens.remi import make_tokenizer

N_COMPOSERS = 12


def model_for(tokenizer, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.cpu_default(
        vocab_size=len(tokenizer.vocab), n_composers=N_COMPOSERS, **overrides
    )
    return GPT(cfg).eval()


def sampling(args: argparse.Namespace) -> dict:
    tokenizer = make_tokenizer()
    model = model_for(tokenizer)

    def run(n: int, guidance: float, use_cache: bool) -> float:
        cfg = SampleConfig(max_tokens=n, min_tokens=n, guidance=guidance, seed=0)
        _, stats = generate(model, tokenizer, 1, cfg=cfg, use_cache=use_cache)
        assert stats["tokens"] == n, stats
        return stats["tokens_per_s"]

    run(16, 1.0, True)  # warm-up
    cached = guided = 0.0
    for _ in range(args.repeats):  # interleaved, best of each: shared cores are noisy
        cached = max(cached, run(args.tokens, 1.0, True))
        guided = max(guided, run(args.tokens, args.guidance, True))
    out = {
        "bench": "sampling",
        "model": "cpu_default",
        "params": model.n_params(),
        "context": model.config.context,
        "threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "cached_tok_s": cached,
        "guided_cached_tok_s": guided,
        "guidance": args.guidance,
        "repeats": args.repeats,
    }
    if args.rows > 1:  # stage 09 samples its pieces as rows of one batch
        cfg = SampleConfig(max_tokens=args.tokens, min_tokens=args.tokens, guidance=args.guidance)
        requests = [Request(1 + i % (N_COMPOSERS - 1), (), i) for i in range(args.rows)]
        t0 = time.perf_counter()
        generate_batch(model, tokenizer, requests, cfg)
        batched = args.rows * args.tokens / (time.perf_counter() - t0)
        out.update(batch_rows=args.rows, batch_guided_tok_s=round(batched, 1))
    n = min(args.nocache_tokens or args.tokens, args.tokens)
    nocache = run(n, 1.0, False)
    out.update(
        nocache_tokens=n,
        nocache_tok_s=nocache,
        nocache_note="measured over all tokens"
        if n == args.tokens
        else f"measured over the first {n} tokens only, cheaper per token than over "
        f"{args.tokens} (the recomputed window grows): cache_speedup is a lower bound",
    )
    speedup, cfg_cost = cached / nocache, cached / guided
    out.update(
        cache_speedup=round(speedup, 2),
        cfg_cost=round(cfg_cost, 3),
        pass_cache_speedup=speedup >= 5.0,
        pass_cfg_cost=cfg_cost <= 2.0,
    )
    return out


def training(args: argparse.Namespace) -> dict:
    tokenizer = make_tokenizer()
    model = model_for(tokenizer).train()
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
        "model": "cpu_default",
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
    ap.add_argument(
        "--nocache-tokens",
        type=int,
        default=0,
        help="no-cache baseline on the first N tokens only (0 = all --tokens)",
    )
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: one-token steps are too small to share)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="cached runs, best one counts")
    ap.add_argument(
        "--rows", type=int, default=32, help="also sample this many guided pieces as one batch"
    )
    ap.add_argument("--train", action="store_true", help="measure training tokens/s instead")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(json.dumps(training(args) if args.train else sampling(args)))


if __name__ == "__main__":
    main()
