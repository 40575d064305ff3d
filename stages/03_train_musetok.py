"""Stage 03: MuseTok token shards -> models/musetok/ (trained here, or a pretrained checkpoint)."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.core.reports import write_curves, write_metrics
from midipipe.musetok.train import PROFILES, MuseTokTrainParams, train_musetok
from midipipe.training import distributed


def main() -> None:
    p = params.profiled(MuseTokTrainParams, "params.yaml", "musetok", PROFILES)
    tp = params.merged_train(params.load(), p.train)
    run = train_musetok(p, tp, "data/tokens/musetok", "data/manifest.parquet", "models/musetok")
    if not distributed.is_main():  # under torchrun the main process alone writes
        return
    write_metrics("metrics/musetok.json", run.metrics)
    write_curves(
        run.history,
        "metrics/musetok_curve.csv",
        "metrics/musetok_loss.png",
        run.title,
        ("train_recons_loss", "valid_loss", "valid_token_acc"),
    )


if __name__ == "__main__":
    run_main(main)
