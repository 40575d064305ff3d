"""Stage 00: every source in `data.sources` -> the corpus store data/corpus/, the manifest,
bar labels and organize's rejects."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.data.organize import organize


def main() -> None:
    organize(params.load(), data_dir="data", metrics_path="metrics/organize.json")


if __name__ == "__main__":
    run_main(main)
