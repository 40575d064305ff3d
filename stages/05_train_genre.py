"""Stage 05: REMI token shards + manifest labels -> models/genre_phrase/, metrics, confusion."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_curves, write_metrics
from midipipe.evaluation.confusion import write_confusion
from midipipe.genre.params import PROFILES, GenreParams
from midipipe.genre.phrase_train import train_phrase
from midipipe.training import distributed


def main() -> None:
    p = params.profiled(GenreParams, "params.yaml", "genre", PROFILES)
    tp = params.merged_train(params.load(), p.train)
    r = train_phrase(
        p,
        tp,
        "data/tokens/remi",
        "data/manifest.parquet",
        "models/genre_phrase",
        "checkpoints/genre_phrase",
        "data/corpus",
        "data/latents",
    )
    if not distributed.is_main():  # under torchrun the main process alone writes
        return
    write_metrics("metrics/genre_phrase.json", {"lr": tp.lr, **r.metrics})
    write_curves(
        r.job.history,
        "metrics/genre_phrase_curve.csv",
        None,
        "Phrase classifier",
        ("train_loss", "valid_loss", "valid_macro_f1"),
    )
    write_confusion(
        r.classes,
        [
            ("test phrases", r.test_y, r.test_pred),
            ("test songs (mean phrase probabilities)", r.song_y, r.song_pred),
        ],
        "metrics/genre_phrase_confusion.csv",
        "metrics/genre_phrase_confusion.png",
    )


SKIP = Skip(
    "metrics/genre_phrase.json",
    (
        "metrics/genre_phrase_curve.csv",
        "metrics/genre_phrase_confusion.csv",
        "metrics/genre_phrase_confusion.png",
    ),
    ("models/genre_phrase",),
)

if __name__ == "__main__":
    run_main(main, SKIP)
