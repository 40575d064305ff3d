"""Stage 01: manifest + data/midi -> REMI and MuseTok token shards, tokenizer.json, rejects."""

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
    # an interrupted run resumes (dvc.yaml: persist); anything else starts clean
    summary = tokenize_files(items, "data/tokens", p, total=len(items), resume=True)
    write_json("metrics/tokenize.json", summary.metrics())


if __name__ == "__main__":
    run_main(main)
