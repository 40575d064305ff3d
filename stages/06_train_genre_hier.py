"""Stage 06: REMI token shards + a frozen LM -> models/genre_hier/, metrics/genre_hier.json.

With no LM (models/generator not trained, genre_hier.lm_path not set) it says so in the
metrics and the model folder, and exits 0.
"""

from midipipe.core import params
from midipipe.core.io import atomic_path
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_curves, write_metrics
from midipipe.genre.hier_train import resolve_lm, train_hier
from midipipe.genre.params import GenreHierParams
from midipipe.training import distributed


def main() -> None:
    hp = params.build(GenreHierParams, params.section("params.yaml", "genre_hier"), "genre_hier")
    tp = params.merged_train(params.load(), hp.train)
    r = train_hier(
        hp,
        tp,
        "data/tokens/remi",
        "data/manifest.parquet",
        "models/genre_hier",
        "checkpoints/genre_hier",
        resolve_lm(hp, "models/generator"),
        corpus_dir="data/corpus",
        latents_dir="data/latents",
    )
    if not distributed.is_main():  # under torchrun the main process alone writes
        return
    write_metrics("metrics/genre_hier.json", {"lr": tp.lr, **r.metrics})
    if r.job is None:  # skipped: an empty curve, so the declared plot exists
        with atomic_path("metrics/genre_hier_curve.csv") as tmp:
            tmp.write_text("epoch,train_loss,valid_loss\n")
        return
    write_curves(
        r.job.history,
        "metrics/genre_hier_curve.csv",
        None,
        "Hierarchical genre model",
        ("train_loss", "valid_loss"),
    )


if __name__ == "__main__":  # NothingToLearn deeper in (no train or held-out pieces): skip too
    run_main(
        main,
        Skip("metrics/genre_hier.json", ("metrics/genre_hier_curve.csv",), ("models/genre_hier",)),
    )
