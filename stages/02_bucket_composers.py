"""Stage 02: manifest -> data/composers.json (conditioning ids for the generators)."""

from midipipe import composers, params
from midipipe.logs import run_main
from midipipe.shards import write_json


def main() -> None:
    p = params.load().composers
    write_json("data/composers.json", composers.from_manifest("data/manifest.parquet", p.min_pieces))


if __name__ == "__main__":
    run_main(main)
