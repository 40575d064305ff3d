"""Tokenize rejects per dataset of ../shared/datasets, with the reasons, and the meters remapped.

Runs the stage's own `tokenize_files` over every MIDI file of each dataset folder and prints
one JSON line: per dataset, files, REMI and MuseTok rejects, the reject reasons (counted, with
numbers stripped so that alike reasons group) and the remapped-meter counts. Run it on two
commits to compare rejects before and after a change.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import external_data  # noqa: E402

from midipipe.core.params import TokenizeParams  # noqa: E402
from midipipe.data.sources.base import find_midis  # noqa: E402
from midipipe.tokens.tokenize import tokenize_files  # noqa: E402

DATASETS = ("asap", "emopia", "miditok-tests", "nottingham", "pop909", "vgmidi")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=external_data())
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out: dict = {}
    for name in args.datasets:
        files = list(find_midis(args.data / name))
        if not files:
            sys.exit(f"no MIDI files under {args.data / name} (set MIDIPIPE_EXTERNAL_DATA)")
        items = [(str(i), str(f)) for i, f in enumerate(files)]
        with tempfile.TemporaryDirectory() as tmp:
            summary = tokenize_files(items, tmp, TokenizeParams(workers=args.workers))
            rejects = pq.read_table(Path(tmp) / "rejects.parquet").to_pylist()
        reasons = Counter(
            f"{r['stage'].split('/')[1]}: {re.sub(r'[0-9]+', 'N', r['reason'])[:80]}"
            for r in rejects
        )
        out[name] = {
            "files": len(files),
            "remi_rejects": sum(r["stage"] == "tokenize/remi" for r in rejects),
            "musetok_rejects": sum(r["stage"] == "tokenize/musetok" for r in rejects),
            "reasons": dict(reasons.most_common()),
            "remapped": {
                k: v
                for k, v in summary.metrics().items()
                if any(w in k for w in ("remap", "fold", "snap"))
            },
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
