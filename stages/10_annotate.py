"""Stage 10: GigaMIDI rows (local Parquet, or the hub streamed) + models/musetok + models/emotion
-> data/annotations/<name>/ (per-bar valence/arousal, per-song summary) and metrics/annotate.json
(counts, seconds per phase, bars/s, peak memory, projected hours for all of GigaMIDI v2).

Resumable: rerun after an interruption and finished songs are skipped. `--limit N` overrides
annotate.limit (stream rows to cover). Exits 1 when the stream broke off, after saving its work.
"""

import argparse
import logging
import sys
from pathlib import Path

from midipipe.annotate.params import AnnotateParams
from midipipe.annotate.run import annotate
from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import write_metrics

log = logging.getLogger("midipipe.stage10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="stream rows to cover (overrides annotate.limit)")
    args = parser.parse_args()
    raw = params.section("params.yaml", "annotate")
    if args.limit is not None:
        raw["limit"] = args.limit
    p = params.build(AnnotateParams, raw, "annotate")
    report = annotate(p, Path("data/annotations") / p.name)
    metrics = report.metrics()
    write_metrics("metrics/annotate.json", metrics)
    log.info(
        "%d songs (%d failed), %d bars; this run %.1f bars/s; projected %.0f h for "
        "%d GigaMIDI v2 songs",
        metrics["songs"],
        metrics["songs_failed"],
        metrics["bars"],
        metrics["bars_per_s"],
        metrics["projected_hours_gigamidi_v2"] or 0,
        metrics["projection_songs"],
    )
    if report.stream_error:
        log.error(
            "the source stopped early (%s); finished songs are saved: rerun to resume",
            report.stream_error,
        )
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
