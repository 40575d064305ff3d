"""Stage 12: REMI token shards + data/composers.json -> models/vae/, its metrics and curves."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import Skip, write_curves, write_metrics
from midipipe.training import distributed
from midipipe.vae.train import PROFILES, VAEParams, train


def main() -> None:
    p = params.profiled(VAEParams, "params.yaml", "vae", PROFILES)
    tp = params.merged_train(params.load(), p.train)
    job, metrics = train(
        p,
        tp,
        "data/tokens/remi",
        "data/manifest.parquet",
        "data/composers.json",
        "models/vae",
        "checkpoints/vae",
    )
    if not distributed.is_main():  # under torchrun the main process alone writes
        return
    write_metrics("metrics/vae.json", {"lr": tp.lr, **metrics})
    write_curves(
        job.history,
        "metrics/vae_curve.csv",
        "metrics/vae_loss.png",
        "Label-conditioned VAE (nats per token)",
        ("train_recon_ce", "valid_recon_ce", "train_kl_tok", "valid_kl_tok"),
    )


SKIP = Skip("metrics/vae.json", ("metrics/vae_curve.csv", "metrics/vae_loss.png"), ("models/vae",))

if __name__ == "__main__":
    run_main(main, SKIP)
