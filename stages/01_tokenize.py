"""Stage 01: the corpus store -> REMI and MuseTok token shards, tokenizer.json, rejects."""

from midipipe.core import params
from midipipe.core.io import write_json
from midipipe.core.logs import run_main
from midipipe.tokens.tokenize import tokenize_corpus


def main() -> None:
    # an interrupted run resumes (dvc.yaml: persist); anything else starts clean
    summary = tokenize_corpus("data", params.load().tokenize, resume=True)
    write_json("metrics/tokenize.json", summary.metrics())


if __name__ == "__main__":
    run_main(main)
