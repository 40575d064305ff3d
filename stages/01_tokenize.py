"""Stage 01: the corpus store -> REMI and MuseTok token shards, tokenizer.json, rejects."""

from midipipe.core import params
from midipipe.core.io import write_json
from midipipe.core.logs import run_main
from midipipe.data.store import Corpus
from midipipe.tokens.tokenize import tokenize_files


def main() -> None:
    p = params.load().tokenize
    corpus = Corpus("data/corpus", "data/manifest.parquet")
    items = [(pid, "{}:{}".format(*corpus.where[pid])) for pid in corpus.in_store_order()]
    # an interrupted run resumes (dvc.yaml: persist); anything else starts clean
    summary = tokenize_files(
        items,
        "data/tokens",
        p,
        total=len(items),
        resume=True,
        music=lambda todo: corpus.iter_music(pid for pid, _ in todo),
    )
    write_json("metrics/tokenize.json", summary.metrics())


if __name__ == "__main__":
    run_main(main)
