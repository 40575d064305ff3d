"""Stage 14: manifest + data/midi -> data/gigamidi/ (the corpus in GigaMIDI's Parquet schema),
so stages 10-11 read the embedded corpus the way they read GigaMIDI."""

from midipipe.annotate.gigamidi_export import ExportParams, export
from midipipe.core import params
from midipipe.core.logs import run_main


def main() -> None:
    p = params.build(
        ExportParams, params.section("params.yaml", "export_gigamidi"), "export_gigamidi"
    )
    export("data/manifest.parquet", "data/midi", "data/gigamidi", p.rows_per_file)


if __name__ == "__main__":
    run_main(main)
