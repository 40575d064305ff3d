"""MuseTok MIDI -> events: our symusic+numpy conversion against the reference's timings.

For every MIDI file of the MuseTok test vectors, times `midi_to_events` on the file's bytes
(symusic parsing included, id lookup excluded, as in the reference's timing) as the median of 3
runs, and divides the reference median in timing.json by it; `ours_with_file_read_*` times the
same call on the path (file read included). Prints one JSON line. Target: every file >= 20x.
Wall time on a shared 2-core box is inflated by other load (`load_avg_1m` is reported);
`--sweeps N` keeps each file's best median over N sweeps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from midipipe.musetok.events import MuseTokReject, midi_to_events

ROOT = Path(__file__).resolve().parents[1]
TARGET = 20.0
RUNS = 3


def _default_vectors() -> Path:
    env = os.environ.get("MIDIPIPE_MUSETOK_VECTORS")
    return Path(env) if env else ROOT.parent / "shared" / "musetok-vectors"


def _convert(src) -> None:
    try:
        midi_to_events(src)
    except MuseTokReject:
        pass  # rejected files are timed up to the rejection, as in the reference


def _median_ms(fn, arg) -> float:
    runs = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn(arg)
        runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vectors", type=Path, default=_default_vectors())
    ap.add_argument(
        "--sweeps",
        type=int,
        default=1,
        help="time every file in N sweeps and keep its best median (damps other load on the box)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    timing_file = args.vectors / "timing.json"
    if not timing_file.is_file():
        sys.exit(f"no timing.json under {args.vectors} (set --vectors or MIDIPIPE_MUSETOK_VECTORS)")
    ref = json.loads(timing_file.read_text())["files"]

    per_file = {}
    _convert((args.vectors / "midi" / f"{next(iter(ref))}.mid").read_bytes())  # warm caches
    for _ in range(max(1, args.sweeps)):
        for name, entry in ref.items():
            path = args.vectors / "midi" / f"{name}.mid"
            ours = _median_ms(_convert, path.read_bytes())
            with_read = _median_ms(_convert, path)
            if name in per_file:
                ours, with_read = min(ours, per_file[name][1]), min(with_read, per_file[name][2])
            per_file[name] = (entry["median_ms"], ours, with_read)

    speedups = {n: r / o for n, (r, o, _) in per_file.items()}
    slowest = min(speedups, key=speedups.get)
    result = {
        "bench": "musetok_events",
        "files": len(per_file),
        "ours_ms_median": round(statistics.median(o for _, o, _ in per_file.values()), 4),
        "ours_with_file_read_ms_median": round(
            statistics.median(w for _, _, w in per_file.values()), 4
        ),
        "ref_ms_median": round(statistics.median(r for r, _, _ in per_file.values()), 4),
        "ours_ms_total": round(sum(o for _, o, _ in per_file.values()), 2),
        "ref_ms_total": round(sum(r for r, _, _ in per_file.values()), 2),
        "speedup_median": round(statistics.median(speedups.values()), 1),
        "speedup_min": round(speedups[slowest], 1),
        "slowest_file": slowest,
        "target_speedup": TARGET,
        "sweeps": max(1, args.sweeps),
        "pass": min(speedups.values()) >= TARGET,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the 2 cores skews wall time
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
