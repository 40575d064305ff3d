"""Per-bar latent extraction throughput of MuseTok (random weights) versus batch size.

The naive approach encodes one bar per forward pass (batch size 1); that is the baseline each
row's ``speedup_vs_bs1`` is measured against, in the same run.  Memory is the peak resident set
size (RSS, sampled every 2 ms by `common.PeakRSS`) minus the RSS just before the timed
batches; on CUDA it is ``torch.cuda.max_memory_allocated`` minus the allocation before them.

Prints one JSON line: {"benchmark": ..., "rows": [...], ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from midipipe.musetok.model import MuseTok, MuseTokConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS  # noqa: E402

log = logging.getLogger("bench_latents")

SIZES = {
    "cpu_default": MuseTokConfig.cpu_default,
    "small": MuseTokConfig.small,
    "large": MuseTokConfig.large,
}
BATCH_SIZES = (1, 4, 16, 64, 256)


@dataclass
class Plan:
    """How many batches to time per batch size, capped so big models finish in minutes."""

    max_batches: int
    max_bars: int
    min_seconds: float


PLANS = {
    # (full, quick)
    "cpu_default": (Plan(10, 1024, 1.0), Plan(5, 256, 0.5)),
    "small": (Plan(2, 32, 2.0), Plan(1, 64, 0.0)),
    "large": (Plan(2, 32, 2.0), Plan(1, 64, 0.0)),
}


def random_bars(n: int, cfg: MuseTokConfig, rng: np.random.Generator):
    """Rows shaped like real bars: Bar_None, then 7..127 random events, PAD after."""
    lengths = rng.integers(8, cfg.enc_seqlen + 1, size=n)
    ids = np.full((n, cfg.enc_seqlen), cfg.pad_id, dtype=np.int64)
    mask = np.ones((n, cfg.enc_seqlen), dtype=bool)
    mask[:, :2] = False
    for i, length in enumerate(lengths):
        ids[i, 0] = 0
        ids[i, 1:length] = rng.integers(1, cfg.pad_id, size=length - 1)
        mask[i, :length] = False
    return torch.from_numpy(ids), torch.from_numpy(mask)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    model: MuseTok, bs: int, plan: Plan, device: torch.device, rng: np.random.Generator
) -> dict:
    n_batches = max(1, min(plan.max_batches, plan.max_bars // bs))
    batches = [random_bars(bs, model.config, rng) for _ in range(n_batches)]
    batches = [(ids.to(device), mask.to(device)) for ids, mask in batches]
    done = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), PeakRSS(interval=0.002) as rss:
        sync(device)
        t0 = time.perf_counter()
        while done < n_batches or (time.perf_counter() - t0 < plan.min_seconds and done < 50):
            ids, mask = batches[done % n_batches]
            model.encode_bars(ids, mask)
            done += 1
            sync(device)
        seconds = time.perf_counter() - t0
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device) - base
    else:
        mem = rss.peak - rss.start
    return {
        "batch_size": bs,
        "batches": done,
        "bars": done * bs,
        "seconds": round(seconds, 4),
        "bars_per_s": round(done * bs / seconds, 2),
        "peak_mem_delta_mb": round(mem / 2**20, 1),
    }


def run(sizes: list[str], batch_sizes: list[int], device: torch.device, quick: bool) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for name in sizes:
        cfg = SIZES[name]()
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = MuseTok(cfg).to(device).eval()
        build_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in model.parameters())
        with torch.inference_mode():  # warm-up: kernel selection, allocator
            model.encode_bars(*(t.to(device) for t in random_bars(4, cfg, rng)))
        plan = PLANS[name][1 if quick else 0]
        size_rows = []
        for bs in batch_sizes:
            row = {"config": name, "params": n_params, "build_s": round(build_s, 2)}
            row.update(time_batches(model, bs, plan, device, rng))
            log.info("%s", row)
            size_rows.append(row)
        base = next((r["bars_per_s"] for r in size_rows if r["batch_size"] == 1), None)
        for row in size_rows:
            row["speedup_vs_bs1"] = round(row["bars_per_s"] / base, 2) if base else None
        rows += size_rows
        del model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true", help="smaller sweep, one batch each")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma list of " + ",".join(SIZES))
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 1,4,16,64,256)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_sizes:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    else:
        batch_sizes = list(BATCH_SIZES[:-1] if args.quick else BATCH_SIZES)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]

    t0 = time.perf_counter()
    rows = run(sizes, batch_sizes, device, args.quick)
    result = {
        "benchmark": "musetok_encode_bars",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        "mem_method": "cuda max_memory_allocated delta"
        if device.type == "cuda"
        else "peak RSS delta (psutil, 2 ms sampling)",
        "baseline": "batch_size 1 (one bar per forward pass)",
        "input": "random ids, bar lengths uniform 8..128, always padded to 128",
        "total_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
