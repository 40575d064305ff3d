"""Stage 13: models/vae -> outputs/generated_vae/*.mid, metrics/vae_generation.json
(conditioning accuracy by the composer judge of stage 09 against chance, the judge's own
accuracy on real excerpts, relative cosine similarity, music-metric distances, latent
silhouette), the judge's confusion matrices and the latent PCA plot."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_metrics
from midipipe.vae.sample import GenerateVAEParams, evaluate_vae


def main() -> None:
    gp = params.build(
        GenerateVAEParams, params.section("params.yaml", "generate_vae"), "generate_vae"
    )
    metrics, _ = evaluate_vae(
        gp,
        "models/vae",
        "data/tokens/remi",
        "data/manifest.parquet",
        "outputs/generated_vae",
        "metrics/vae_confusion.png",
        "metrics/vae_latent.png",
        "models/genre_phrase",
    )
    write_metrics("metrics/vae_generation.json", metrics)


SKIP = Skip(
    "metrics/vae_generation.json",
    ("metrics/vae_confusion.csv", "metrics/vae_confusion.png", "metrics/vae_latent.png"),
    ("outputs/generated_vae",),
)

if __name__ == "__main__":
    run_main(main, SKIP)
