"""Stage 01: manifest + data/midi -> REMI and MuseTok token shards, tokenizer.json, rejects."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from midipipe.core import params
from midipipe.core.io import write_json
from midipipe.core.logs import run_main
from midipipe.data.sources.base import inside
from midipipe.tokens.tokenize import tokenize_files


def main() -> None:
    p = params.load().tokenize
    manifest = pq.read_table("data/manifest.parquet", columns=["piece_id", "path"]).to_pylist()
    root = Path("data/midi")
    items = [
        (r["piece_id"], str(inside(root, r["path"], "data/manifest.parquet:path")))
        for r in manifest
    ]
    out = Path("data/tokens")
    shutil.rmtree(out, ignore_errors=True)  # no stale parts from a larger earlier run
    summary = tokenize_files(items, out, p, total=len(items))
    write_json("metrics/tokenize.json", summary.metrics())


if __name__ == "__main__":
    run_main(main)
