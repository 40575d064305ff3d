"""Stage 08: REMI token shards + data/composers.json -> models/generator/, its metrics.

Also runs data-parallel: `torchrun --nproc_per_node 2 stages/08_train_generator.py`.
"""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_curves, write_metrics
from midipipe.generator.train import PROFILES, GeneratorParams, train
from midipipe.training import distributed


def main() -> None:
    p = params.profiled(GeneratorParams, "params.yaml", "generator", PROFILES)
    tp = params.merged_train(params.load(), p.train)
    job, metrics = train(
        p,
        tp,
        "data/tokens/remi",
        "data/manifest.parquet",
        "data/composers.json",
        "models/generator",
        "checkpoints/generator",
    )
    if not distributed.is_main():
        return
    write_metrics("metrics/generator.json", {"lr": tp.lr, **metrics})
    write_curves(
        job.history,
        "metrics/generator_curve.csv",
        "metrics/generator_loss.png",
        "Composer-conditioned GPT",
        ("train_nll", "valid_loss"),
    )


SKIP = Skip(
    "metrics/generator.json",
    ("metrics/generator_curve.csv", "metrics/generator_loss.png"),
    ("models/generator",),
)

if __name__ == "__main__":
    run_main(main, SKIP)
