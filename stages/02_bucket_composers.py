"""Stage 02: manifest -> data/composers.json (conditioning ids) and a composer-count plot."""

import csv

from midipipe.core import params
from midipipe.core.io import atomic_path, write_json
from midipipe.core.logs import run_main
from midipipe.data import composers


def main() -> None:
    p = params.load().composers
    table = composers.from_manifest("data/manifest.parquet", p.min_pieces)
    write_json("data/composers.json", table)
    with atomic_path("metrics/composers.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["composer", "pieces"])
        writer.writerows((c["name"], c["count"]) for c in table["composers"])
        writer.writerow(["OTHER", table["other"]["count"]])


if __name__ == "__main__":
    run_main(main)
