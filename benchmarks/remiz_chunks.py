"""REMI-z chunks (`genre.remiz`, what the plan's m2m_pt reads) on real corpora, beside the
project's REMI chunks (`phrases.chunks`, what the default hierarchical model reads) of the same
files in the same run: files read, seconds per file, 8-bar chunks and their token counts, and
the share of chunks past m2m_pt's 2,048 positions and past the plan notebook's 256.

Prints one JSON line. Data root: MIDIPIPE_EXTERNAL_DATA (default ../shared/datasets).
    python benchmarks/remiz_chunks.py --per-corpus 120
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import external_data  # noqa: E402

from midipipe.core.errors import BadMidi  # noqa: E402
from midipipe.data.midi import load_score  # noqa: E402
from midipipe.genre import remiz  # noqa: E402
from midipipe.genre.phrases import Vocab, chunks  # noqa: E402
from midipipe.tokens import remi  # noqa: E402

CORPORA = {
    "miditok": "miditok-tests/*/*.mid",
    "pop909": "pop909/*/*.mid",
    "nottingham": "nottingham/*.mid",
    "emopia": "emopia/midis/*.mid",
    "vgmidi": "vgmidi/midi/*.mid",
    "asap_scores": "asap/**/midi_score.mid",
}
BARS = 8


def survey(files: list[Path], lengths: Callable[[Path], list[int]]) -> dict:
    """Files read, s/file and chunk-length statistics of one chunker over `files`."""
    read, sizes, t0 = 0, [], time.perf_counter()
    for path in files:
        try:
            sizes += lengths(path)
            read += 1
        except BadMidi:
            pass
    n = np.asarray(sizes)
    return {
        "read": read,
        "s_per_file": round((time.perf_counter() - t0) / max(1, len(files)), 3),
        "chunks": len(n),
        "median_tokens": int(np.median(n)) if len(n) else 0,
        "p95_tokens": int(np.percentile(n, 95)) if len(n) else 0,
        "over_2048": round(float((n > 2048).mean()), 4) if len(n) else 0.0,
        "over_256": round(float((n > 256).mean()), 4) if len(n) else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-corpus", type=int, default=120, help="files sampled per corpus")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = external_data()
    tokenizer = remi.make_tokenizer()
    vocab = Vocab.of(tokenizer)

    def remiz_lengths(path: Path) -> list[int]:  # + [BOS] and [EOS], as m2m_pt's tokenizer adds
        return [len(t.split()) + 2 for t in remiz.segments(path, BARS)[0]]

    def remi_lengths(path: Path) -> list[int]:
        ids, bars = remi.encode(tokenizer, load_score(path))
        return [len(s) for s in chunks(ids, bars, vocab, BARS, 10**9).seqs]

    out: dict = {"bench": "remiz_chunks", "bars_per_chunk": BARS, "per_corpus": args.per_corpus}
    for name, pattern in CORPORA.items():
        files = sorted(data.glob(pattern))
        if not files:
            raise SystemExit(f"no files match {data / pattern}: set MIDIPIPE_EXTERNAL_DATA")
        if len(files) > args.per_corpus:
            files = sorted(random.Random(args.seed).sample(files, args.per_corpus))
        out[name] = {
            "files": len(files),
            "remiz": survey(files, remiz_lengths),
            "remi_baseline": survey(files, remi_lengths),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
