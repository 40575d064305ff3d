"""Stage 09: models/generator -> outputs/generated/*.mid, metrics/generation.json (music metrics
against real held-out excerpts, overall and per composer; conditioning accuracy by the
composer judge, stage 05's model when it judges composers, beside the judge's own accuracy
on real excerpts) and the judge's confusion matrices."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_metrics
from midipipe.generator.generate import GenerateParams, evaluate_generator


def main() -> None:
    gp = params.build(GenerateParams, params.section("params.yaml", "generate"), "generate")
    metrics = evaluate_generator(
        gp,
        "models/generator",
        "data/tokens/remi",
        "data/manifest.parquet",
        "outputs/generated",
        "metrics/generation_confusion.png",
        "models/genre_phrase",
    )
    write_metrics("metrics/generation.json", metrics)


SKIP = Skip(
    "metrics/generation.json", ("metrics/generation_confusion.png",), ("outputs/generated",)
)

if __name__ == "__main__":
    run_main(main, SKIP)
