"""The device check: what the plans' models do on one GPU, and whether resume and NCCL work.

    python benchmarks/gpu_check.py                    # on a GPU: the plans' sizes, < 8 min
    python benchmarks/gpu_check.py --cpu              # tiny sizes on CPU (CI keeps it working)
    python benchmarks/gpu_check.py --cpu --skip resume,ddp

Prints one JSON line, each figure beside its baseline from the same run:
- train: the gpu profile's GPT (8 x 512, context 8192) at batch 2, bf16 autocast, the stage's
  loss and optimizer: it/s and peak memory, against the plan's 5 it/s on an H200 NVL;
- sampling: tokens/s over 1024 new tokens (`generator.sampling` as it is), unguided and
  guided, one stream and a batch of 32 pieces, against the plan's 10-20 tokens/s; on CUDA
  also the guided batch under `core.device.inference_mode` (bf16);
- musetok: the official-size encoder's bars/s through `musetok.encode.encode_pieces` at bf16
  against fp32 (both with bars packed across pieces) and against one bar per row, and how
  often bf16 picks the same codes as fp32;
- phrase: the gpu profile's phrase encoder's phrases/s at bf16 against fp32;
- resume: a tiny run killed by SIGKILL after a mid-epoch checkpoint and resumed ends with
  the same weights as a straight one (fp16 on CUDA, so the GradScaler's state counts too);
- ddp: the tiny run under torchrun with 2 processes (NCCL when 2 GPUs are there; gloo with
  --cpu), each rank on its own device, the main one alone writing.
A section that fails reports its error and the others still run. Weights are random: the
figures are speeds, not quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from midipipe.core.device import autocast_dtype, enable_tf32, inference_mode
from midipipe.core.params import TrainParams
from midipipe.generator import windows as gd
from midipipe.generator.gpt import GPT, GPTConfig
from midipipe.generator.sampling import Request, SampleConfig, generate, generate_batch
from midipipe.generator.train import PROFILES as GPT_PROFILES
from midipipe.genre.encoder import Encoder, EncoderConfig
from midipipe.genre.params import PROFILES as GENRE_PROFILES
from midipipe.genre.phrase_train import phrase_probs
from midipipe.musetok.encode import encode_pieces
from midipipe.musetok.model import MuseTok, MuseTokConfig
from midipipe.musetok.train import PROFILES as MUSETOK_PROFILES
from midipipe.tokens.remi import make_tokenizer
from midipipe.training.fit import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_check import kill_and_resume, two_processes  # noqa: E402

N_COMPOSERS = 12
SECTIONS = ("train", "sampling", "musetok", "phrase", "resume", "ddp")


@dataclass(frozen=True)
class Sizes:
    gpt: dict  # GPTConfig architecture keys
    context: int
    train_batch: int
    train_steps: int
    sample_tokens: int
    sample_rows: int  # pieces in the batched sampling run
    musetok: str  # MuseTokConfig named size
    pieces: int  # synthetic pieces for the encoder (16-64 bars each)
    one_per_row_pieces: int  # of them, encoded one bar per row
    phrase: dict  # EncoderConfig architecture keys
    phrases: int


SIZES = {
    "gpu": Sizes(
        gpt=GPT_PROFILES["gpu"]["model"],
        context=GPT_PROFILES["gpu"]["context"],
        train_batch=GPT_PROFILES["gpu"]["train"]["batch_size"],
        train_steps=20,
        sample_tokens=1024,
        sample_rows=32,
        musetok=MUSETOK_PROFILES["gpu"]["size"],
        pieces=500,
        one_per_row_pieces=25,
        phrase=GENRE_PROFILES["gpu"]["model"],
        phrases=8192,
    ),
    "cpu": Sizes(
        gpt={"n_layer": 2, "n_head": 2, "d_model": 64, "d_ff": 128},
        context=128,
        train_batch=2,
        train_steps=3,
        sample_tokens=24,
        sample_rows=4,
        musetok="cpu_default",
        pieces=4,
        one_per_row_pieces=1,
        phrase={"n_layer": 1, "n_head": 2, "d_model": 32, "d_ff": 64},
        phrases=32,
    ),
}


class Clock:
    """Wall time of a block, the device's queued work included."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.s = device, 0.0

    def __enter__(self) -> Clock:
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.s = time.perf_counter() - self.t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def gpt(sizes: Sizes, tokenizer) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        **sizes.gpt,
        context=sizes.context,
        vocab_size=len(tokenizer.vocab),
        pad_id=tokenizer.pad_token_id,
        n_composers=N_COMPOSERS,
    )
    return GPT(cfg)


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_train(sizes: Sizes, device: torch.device) -> dict:
    tokenizer = make_tokenizer()
    model = gpt(sizes, tokenizer).to(device).train()
    enable_tf32(device)
    amp = autocast_dtype("auto", device)
    opt = make_optimizer(model, TrainParams(lr=3e-4))
    g = torch.Generator().manual_seed(0)
    shape = (sizes.train_batch, sizes.context + 1)
    ids = torch.randint(4, len(tokenizer.vocab), shape, generator=g)
    batch = {
        "inputs": ids[:, :-1].to(device),
        "targets": ids[:, 1:].to(device),
        "composer": torch.randint(0, N_COMPOSERS, (sizes.train_batch,), generator=g).to(device),
    }

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, _ = gd.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    for _ in range(2):
        step()
    free(device)
    with Clock(device) as clock:
        for _ in range(sizes.train_steps):
            loss = step()
    out = {
        "params": model.n_params(),
        "context": sizes.context,
        "batch": sizes.train_batch,
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "steps": sizes.train_steps,
        "it_s": round(sizes.train_steps / clock.s, 3),
        "tokens_s": round(sizes.train_steps * sizes.train_batch * sizes.context / clock.s, 1),
        "final_loss": round(float(loss), 4),
        "plan_it_s": 5.0,
    }
    if device.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def check_sampling(sizes: Sizes, device: torch.device) -> dict:
    tokenizer = make_tokenizer()
    model = gpt(sizes, tokenizer).to(device).eval()
    n = sizes.sample_tokens

    def run(rows: int, guidance: float, tokens: int = n) -> float:
        cfg = SampleConfig(max_tokens=tokens, min_tokens=tokens, guidance=guidance, seed=0)
        with Clock(device) as clock:
            if rows == 1:
                _, stats = generate(model, tokenizer, 1, cfg=cfg)
                made = stats["tokens"]
            else:
                requests = [Request(1 + i % (N_COMPOSERS - 1), (), i) for i in range(rows)]
                made = sum(s["tokens"] for _, s in generate_batch(model, tokenizer, requests, cfg))
        return round(made / clock.s, 1)

    run(1, 1.0, 8)  # warm-up
    out: dict = {"tokens": n, "batch_rows": sizes.sample_rows, "guidance": 3.0}
    for rows, label in ((1, "one"), (sizes.sample_rows, "batch")):
        for guidance, kind in ((1.0, "unguided"), (3.0, "guided")):
            out[f"{label}_{kind}_tok_s"] = run(rows, guidance)
    if device.type == "cuda":  # what adopting core.device.inference_mode would give
        try:
            with inference_mode(device):
                out["batch_guided_bf16_tok_s"] = run(sizes.sample_rows, 3.0)
        except Exception as exc:  # the fp32 figures above stand on their own
            out["batch_guided_bf16_tok_s"] = f"{type(exc).__name__}: {exc}"[:500]
    out["batch_over_one_guided"] = round(out["batch_guided_tok_s"] / out["one_guided_tok_s"], 2)
    out["plan_tok_s"] = "10-20"
    return out


def synthetic_pieces(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """MuseTok-like pieces: 16-64 bars of 1 + Poisson(23) events (the corpus averages 24)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(n):
        lengths = 1 + rng.poisson(23, size=int(rng.integers(16, 65)))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        ids = rng.integers(0, 167, size=int(lengths.sum())).tolist()
        pieces.append((ids, starts))
    return pieces


def check_musetok(sizes: Sizes, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = MuseTok(getattr(MuseTokConfig, sizes.musetok)()).to(device).eval()
    pieces = synthetic_pieces(sizes.pieces)
    n_bars = sum(len(starts) for _, starts in pieces)

    def run(precision: str, subset, batch_size: int):
        with Clock(device) as clock, inference_mode(device, precision):
            outs = list(encode_pieces(model, subset, batch_size=batch_size))
        return outs, clock.s

    run("bf16", pieces[:2], 256)  # warm-up
    bf16, t_bf16 = run("bf16", pieces, 256)
    fp32, t_fp32 = run("fp32", pieces, 256)
    few = pieces[: sizes.one_per_row_pieces]
    few_bars = sum(len(starts) for _, starts in few)
    _, t_row = run("fp32", few, 1)
    a = np.concatenate([o.codes for o in bf16])
    b = np.concatenate([o.codes for o in fp32])
    out = {
        "size": sizes.musetok,
        "params": sum(p.numel() for p in model.parameters()),
        "bars": n_bars,
        "bf16_packed_bars_s": round(n_bars / t_bf16, 1),
        "fp32_packed_bars_s": round(n_bars / t_fp32, 1),
        "fp32_one_per_row_bars_s": round(few_bars / t_row, 1),
        "one_per_row_bars": few_bars,
        "batch_size": 256,
        "code_agreement_l0": round(float((a[:, 0] == b[:, 0]).mean()), 4),
        "code_agreement_all_levels": round(float((a == b).all(1).mean()), 4),
        "target_bars_s": 20000,
    }
    out["bf16_over_fp32"] = round(out["bf16_packed_bars_s"] / out["fp32_packed_bars_s"], 2)
    out["bf16_over_one_per_row"] = round(
        out["bf16_packed_bars_s"] / out["fp32_one_per_row_bars_s"], 1
    )
    return out


def check_phrase(sizes: Sizes, device: torch.device) -> dict:
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    cfg = EncoderConfig(
        **sizes.phrase, vocab_size=len(tokenizer.vocab), n_classes=8, pad_id=tokenizer.pad_token_id
    )
    model = Encoder(cfg).to(device).eval()
    rng = np.random.default_rng(0)
    seqs = [
        rng.integers(4, len(tokenizer.vocab), size=int(rng.integers(64, cfg.max_len + 1)))
        for _ in range(sizes.phrases)
    ]

    def run(precision: str, subset) -> float:
        with Clock(device) as clock, inference_mode(device, precision):
            phrase_probs(model, subset, batch_size=64)
        return clock.s

    run("auto", seqs[:64])  # warm-up
    auto = "bf16" if autocast_dtype("auto", device) is torch.bfloat16 else "fp32"
    t_auto, t_fp32 = run("auto", seqs), run("fp32", seqs)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "phrases": len(seqs),
        "mean_tokens": round(float(np.mean([len(s) for s in seqs])), 1),
        "auto_precision": auto,
        "auto_phrases_s": round(len(seqs) / t_auto, 1),
        "fp32_phrases_s": round(len(seqs) / t_fp32, 1),
        "auto_over_fp32": round(t_fp32 / t_auto, 2),
    }


def check_resume(device: torch.device) -> dict:
    precision = "fp16" if device.type == "cuda" else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        return kill_and_resume(Path(tmp), device.type, precision)


def check_ddp(device: torch.device, cpu: bool) -> dict:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not cpu and gpus < 2:
        return {"skipped": f"{gpus} GPU"}
    with tempfile.TemporaryDirectory() as tmp:
        return two_processes(Path(tmp), "cpu" if cpu else "cuda")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--skip", default="", help=f"comma-separated sections of {SECTIONS}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        ap.error(f"--skip: unknown sections {sorted(unknown)} (known: {', '.join(SECTIONS)})")
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for the tiny CPU check")
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:  # tiny models: one thread is fastest, and steady on a shared machine
        torch.set_num_threads(1)
    sizes = SIZES["cpu" if args.cpu else "gpu"]
    out: dict = {
        "bench": "gpu_check",
        "mode": "cpu" if args.cpu else "gpu",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "sizes": dataclasses.asdict(sizes),
    }
    checks = {
        "train": lambda: check_train(sizes, device),
        "sampling": lambda: check_sampling(sizes, device),
        "musetok": lambda: check_musetok(sizes, device),
        "phrase": lambda: check_phrase(sizes, device),
        "resume": lambda: check_resume(device),
        "ddp": lambda: check_ddp(device, args.cpu),
    }
    t0 = time.perf_counter()
    for name, check in checks.items():
        if name in skip:
            out[name] = {"skipped": "--skip"}
            continue
        t = time.perf_counter()
        try:
            out[name] = check()
        except Exception as exc:  # one failing section must not hide the others' figures
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            traceback.print_exc()
        out[name]["seconds"] = round(time.perf_counter() - t, 1)
        free(device)  # the section's models are gone: its memory goes back
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
