"""Peak memory of generator training data feeding at N and 10 N pieces: the streaming dataset
(`tokens.dataset`) against reading every split into Python lists (`tokens_by_split`).

Synthetic REMI token shards (random ids, log-normal lengths around a real piece's, 1024
pieces a part, 64 valid and 64 test pieces, the rest train) are written to a temporary
folder. Each measurement runs in its own subprocess, whose peak RSS comes from `os.wait4`:
- `stream`: one full epoch of stage 08's training batches (`generator.train.train_stream`),
  then stage 08 itself (`generator.train.train`, cpu_default GPT) for a few optimizer steps;
- `lists`: the pre-streaming path, `tokens_by_split` and one epoch of in-memory
  `windows.train_batches`, at N only (10 N would not fit in a small machine's memory).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from midipipe.core.io import write_json
from midipipe.core.params import TrainParams
from midipipe.data import composers as C
from midipipe.generator import train as gt
from midipipe.generator import windows as gd
from midipipe.generator.corpus import read_table, train_and_valid
from midipipe.tokens import remi
from midipipe.tokens.shards import TOKENS_SCHEMA, tokens_by_split

log = logging.getLogger("bench_streaming")

PART_ROWS = 1024
HELD_OUT = 64  # valid and test pieces each: evaluation splits stay small
COMPOSERS = [f"composer_{k}" for k in range(8)]
BATCH = 16  # the feeding epoch's batch
STEP_BATCH = 4  # the real optimizer steps' batch (the model's memory is not the subject)


def write_corpus(root: Path, n_pieces: int, median_tokens: int, seed: int) -> dict:
    """Token shards, manifest, composers.json and tokenizer.json for `n_pieces` pieces."""
    rng = np.random.default_rng(seed)
    tokens = root / "tokens"
    tokens.mkdir(parents=True)
    tokenizer = remi.make_tokenizer()
    tokenizer.save(tokens / "tokenizer.json")
    vocab = len(tokenizer.vocab)
    lengths = np.clip(rng.lognormal(np.log(median_tokens), 0.6, n_pieces), 16, 40_000).astype(int)
    for i, lo in enumerate(range(0, n_pieces, PART_ROWS)):
        n = lengths[lo : lo + PART_ROWS]
        offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int32)
        ids = rng.integers(4, vocab, offsets[-1], dtype=np.int32)
        bars = [np.arange(0, k, 32, dtype=np.int32) for k in n]
        bar_offsets = np.concatenate([[0], np.cumsum([len(b) for b in bars])]).astype(np.int32)
        table = pa.Table.from_arrays(
            [
                pa.array([f"p{k:07d}" for k in range(lo, lo + len(n))]),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
                pa.ListArray.from_arrays(pa.array(bar_offsets), pa.array(np.concatenate(bars))),
            ],
            schema=TOKENS_SCHEMA,
        )
        pq.write_table(table, tokens / f"part-{i:05d}.parquet")
    split = np.full(n_pieces, "train", dtype=object)
    split[:HELD_OUT], split[HELD_OUT : 2 * HELD_OUT] = "valid", "test"
    composer = [COMPOSERS[k % len(COMPOSERS)] for k in range(n_pieces)]
    pq.write_table(
        pa.table(
            {
                "piece_id": [f"p{k:07d}" for k in range(n_pieces)],
                "split": split.tolist(),
                "composer": composer,
            }
        ),
        root / "manifest.parquet",
    )
    write_json(root / "composers.json", C.bucket(composer, 10))
    return {"pieces": n_pieces, "tokens": int(lengths.sum())}


def window_config(root: Path, context: int) -> gd.WindowConfig:
    return gd.WindowConfig.for_tokenizer(
        remi.load_tokenizer(root / "tokens" / "tokenizer.json"), context
    )


def peak_mb() -> int:
    """This process's peak RSS so far."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child_stream(root: Path, context: int, steps: int) -> dict:
    """One epoch of stage 08's batches from the stream, then a few real optimizer steps."""
    table = read_table(root / "composers.json")
    train_set, _ = train_and_valid(root / "tokens", root / "manifest.parquet", table)
    cfg = window_config(root, context)
    n_windows = gd.total_windows(train_set.length, cfg)
    tp = TrainParams(batch_size=BATCH, device="cpu", precision="fp32", epochs=1)
    t0, batches, tokens = time.perf_counter(), 0, 0
    for batch in gt.train_stream(train_set, cfg, n_windows, tp, torch.Generator().manual_seed(0)):
        batches += 1
        tokens += int((batch["targets"] != cfg.pad_id).sum())
    feed_s, feed_mb = time.perf_counter() - t0, peak_mb()
    p = gt.GeneratorParams(context=context, max_windows=steps * STEP_BATCH, eval_windows=16)
    t0 = time.perf_counter()
    _, metrics = gt.train(
        p,
        dataclasses.replace(tp, batch_size=STEP_BATCH),
        root / "tokens",
        root / "manifest.parquet",
        root / "composers.json",
        root / "model",
        root / "resume",
    )
    return {
        "windows": n_windows,
        "batches": batches,
        "train_tokens_fed": tokens,
        "feed_s": round(feed_s, 1),
        "feed_windows_per_s": round(n_windows / feed_s),
        "feed_peak_rss_mb": feed_mb,
        "train_steps": metrics["steps_per_epoch"],
        "train_s": round(time.perf_counter() - t0, 1),
        "final_train_nll": round(metrics["final_train_nll"], 3),
    }


def child_lists(root: Path, context: int) -> dict:
    """The pre-streaming path: every split in Python lists, one in-memory epoch of windows."""
    t0 = time.perf_counter()
    data = tokens_by_split(root / "tokens", root / "manifest.parquet")
    pieces = [ids for _, ids, _ in data["train"]]
    cfg = window_config(root, context)
    batches = sum(
        1 for _ in gd.train_batches(pieces, [1] * len(pieces), cfg, BATCH, 0, torch.Generator())
    )
    feed_s = round(time.perf_counter() - t0, 1)
    return {"batches": batches, "feed_s": feed_s, "feed_peak_rss_mb": peak_mb()}


def measure(mode: str, root: Path, args) -> dict:
    """Run one mode in a subprocess; its own peak RSS from the kernel."""
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root)]
    cmd += ["--context", str(args.context), "--steps", str(args.steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{mode} on {root} failed ({proc.returncode})")
    return {
        **json.loads(out.strip().splitlines()[-1]),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pieces", type=int, default=10_000, help="N (the larger corpus is 10 N)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--median-tokens", type=int, default=1500)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps of the real stage")
    ap.add_argument("--child", choices=["stream", "lists"])
    ap.add_argument("--root", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        run = child_stream if args.child == "stream" else child_lists
        extra = (args.steps,) if args.child == "stream" else ()
        print(json.dumps(run(args.root, args.context, *extra)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        for name, n in (("N", args.pieces), ("10N", args.pieces * args.scale)):
            root = Path(tmp) / name
            t0 = time.perf_counter()
            corpus = write_corpus(root, n, args.median_tokens, seed=n)
            log.info(
                "%s: %d pieces, %d tokens written in %.0f s",
                name,
                n,
                corpus["tokens"],
                time.perf_counter() - t0,
            )
            rows[f"stream_{name}"] = {**corpus, **measure("stream", root, args)}
            log.info("stream %s: %s", name, rows[f"stream_{name}"])
            if name == "N":
                rows["lists_N"] = {**corpus, **measure("lists", root, args)}
                log.info("lists N: %s", rows["lists_N"])
    small, large = rows["stream_N"]["peak_rss_mb"], rows["stream_10N"]["peak_rss_mb"]
    feed = [rows[k]["feed_peak_rss_mb"] for k in ("stream_N", "stream_10N", "lists_N")]
    print(
        json.dumps(
            {
                "benchmark": "streaming",
                "context": args.context,
                "batch_size": BATCH,
                **rows,
                "stream_rss_ratio_10N_over_N": round(large / small, 2),
                "stream_feed_rss_ratio_10N_over_N": round(feed[1] / feed[0], 2),
                "lists_over_stream_feed_rss_at_N": round(feed[2] / feed[0], 2),
                "goal": "stream ratio ~1, peak <= 4096 MB",
                "met": large <= 4096 and large / small < 1.25,
            }
        )
    )


if __name__ == "__main__":
    main()
