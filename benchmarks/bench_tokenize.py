"""Tokenize throughput on POP909: our process pool against a plain serial miditok loop.

The stage encodes with `fast_remi` (miditok's ids, without its Event objects); a serial loop
of that encoder is timed too, so the encoder's gain and the pool's show separately.

Prints one JSON line; times are the best of `--rounds` alternating rounds. Targets (issue 2):
pool >= 1.8x serial on 2 cores; peak RSS <= 1.5 GB. symusic parse-only time over the same
files is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import symusic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, external_data  # noqa: E402

from midipipe.core.params import TokenizeParams  # noqa: E402
from midipipe.data.midi import piece_id  # noqa: E402
from midipipe.tokens import remi  # noqa: E402
from midipipe.tokens.tokenize import tokenize_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=external_data() / "pop909")
    ap.add_argument("--limit", type=int, default=0, help="first N files only (0 = all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="alternating serial/pool rounds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files = sorted(args.data.glob("*/*.mid")) or sorted(args.data.rglob("*.mid"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        sys.exit(f"no MIDI files under {args.data}")

    t0 = time.perf_counter()
    for f in files:
        symusic.Score(f)
    parse_s = time.perf_counter() - t0

    tokenizer = remi.make_tokenizer()
    items = [(piece_id(f.read_bytes()), str(f)) for f in files]

    def serial() -> int:  # the plain loop a researcher would write
        return sum(len(tokenizer.encode(symusic.Score(f)).ids) for f in files)

    # Serial and pool runs alternate, and each side keeps its best round: on a shared
    # machine a background burst then slows one round, not one side.
    serial_times, pool_times = [], []
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            serial_tokens = serial()
            serial_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            summary = tokenize_files(
                items, Path(tmp) / f"remi_{r}", TokenizeParams(workers=args.workers, musetok=False)
            )
            pool_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tokenize_files(items, Path(tmp) / "both", TokenizeParams(workers=args.workers))
        both_s = time.perf_counter() - t0
    serial_s, pool_s = min(serial_times), min(pool_times)
    t0 = time.perf_counter()
    for f in files:  # our encoder without the pool: separates its speed from the pool's
        remi.encode(tokenizer, symusic.Score(f))
    fast_s = time.perf_counter() - t0

    n = len(files)
    speedup = serial_s / pool_s
    print(
        json.dumps(
            {
                "bench": "tokenize_pop909",
                "files": n,
                "workers": args.workers,
                "serial_files_per_s": round(n / serial_s, 2),
                "serial_tokens_per_s": round(serial_tokens / serial_s),
                "pool_files_per_s": round(n / pool_s, 2),
                "pool_tokens_per_s": round(summary.remi_tokens / pool_s),
                "speedup_vs_serial": round(speedup, 2),
                "speedup_per_round": [
                    round(a / b, 2) for a, b in zip(serial_times, pool_times, strict=True)
                ],
                "serial_fast_remi_files_per_s": round(n / fast_s, 2),
                "fast_remi_vs_miditok": round(serial_s / fast_s, 2),
                "pool_vs_serial_fast_remi": round(fast_s / pool_s, 2),
                "parse_only_files_per_s": round(n / parse_s, 2),
                "pool_remi_and_musetok_files_per_s": round(n / both_s, 2),
                "remi_tokens_equal_serial": summary.remi_tokens == serial_tokens,
                "rejects": summary.rejects,
                "peak_rss_mb": mem.peak_mb,
                "target_speedup": 1.8,
                "target_peak_rss_mb": 1536,
                "pass": speedup >= 1.8 and mem.peak_mb <= 1536,
            }
        )
    )


if __name__ == "__main__":
    main()
