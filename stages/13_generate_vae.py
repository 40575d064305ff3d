"""Stage 13: models/vae -> outputs/generated_vae/*.mid, metrics/vae_generation.json
(conditioning accuracy of a GRU judge against chance, relative cosine similarity, latent
silhouette), the GRU's confusion matrices and the latent PCA plot."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_metrics
from midipipe.vae.sample import GenerateVAEParams, evaluate_vae


def main() -> None:
    gp = params.build(
        GenerateVAEParams, params.section("params.yaml", "generate_vae"), "generate_vae"
    )
    tp = params.merged_train(params.load(), gp.classifier_train)
    metrics, _ = evaluate_vae(
        gp,
        tp,
        "models/vae",
        "data/tokens/remi",
        "data/manifest.parquet",
        "outputs/generated_vae",
        "metrics/vae_confusion.png",
        "metrics/vae_latent.png",
    )
    write_metrics("metrics/vae_generation.json", {"lr": tp.lr, **metrics})


SKIP = Skip(
    "metrics/vae_generation.json",
    ("metrics/vae_confusion.csv", "metrics/vae_confusion.png", "metrics/vae_latent.png"),
    ("outputs/generated_vae",),
)

if __name__ == "__main__":
    run_main(main, SKIP)
