"""Stage 03: MuseTok token shards -> models/musetok/ (trained here, or a pretrained checkpoint)."""

import dataclasses
import logging

import torch

from midipipe import params
from midipipe.logs import run_main
from midipipe.musetok import checkpoint
from midipipe.musetok import train as mt
from midipipe.musetok.model import MuseTok, MuseTokConfig
from midipipe.shards import tokens_by_split
from midipipe.training import Fit, fit, seed_everything, write_curves, write_metrics

log = logging.getLogger("midipipe.stage03")
OUT = "models/musetok"


def main() -> None:
    p = params.build(mt.MuseTokTrainParams, params.section("params.yaml", "musetok"), "musetok")
    tp = params.merged_train(params.load(), p.train)
    data = tokens_by_split("data/tokens/musetok", "data/manifest.parquet")
    train = [(ids, bars) for _, ids, bars in data["train"] if bars]
    valid = [(ids, bars) for _, ids, bars in data["valid"] if bars] or train[:32]

    if p.checkpoint:  # a pretrained tokenizer: evaluate it and store it as safetensors
        model = checkpoint.load(p.checkpoint)
        model.eval()
        with torch.inference_mode():
            valid_metrics = mt.evaluate(model, valid, p, tp.batch_size)
        checkpoint.save(model, OUT)
        write_metrics("metrics/musetok.json", {"source": "pretrained", **valid_metrics})
        write_curves(
            [{"epoch": 0, **valid_metrics}],
            "metrics/musetok_curve.csv",
            "metrics/musetok_loss.png",
            "MuseTok (pretrained, not trained here)",
            ("valid_loss", "valid_token_acc"),
        )
        return

    seed_everything(tp.seed)
    model = MuseTok(dataclasses.replace(getattr(MuseTokConfig, p.size)(), dec_seqlen=p.dec_seqlen))
    n_pieces = min(len(train), p.max_pieces or len(train))
    job = Fit(
        model=model,
        train_batches=lambda epoch, rng: mt.train_batches(train, p, tp.batch_size, epoch, rng),
        steps_per_epoch=-(-n_pieces // tp.batch_size),
        loss=lambda m, batch: mt.loss(m, batch, p.beta),
        evaluate=lambda m: mt.evaluate(m, valid, p, tp.batch_size),
    )
    fit(
        job,
        tp,
        "checkpoints/musetok",
        save_best=lambda m: checkpoint.save(m, OUT),
        fingerprint={"musetok": dataclasses.asdict(p), "pieces": len(train)},
    )
    best = min(job.history, key=lambda h: h["valid_loss"])
    write_metrics(
        "metrics/musetok.json",
        {
            "source": "trained",
            "train_pieces": len(train),
            "valid_pieces": len(valid),
            "best_epoch": best["epoch"],
            **{k: v for k, v in best.items() if k != "epoch"},
        },
    )
    write_curves(
        job.history,
        "metrics/musetok_curve.csv",
        "metrics/musetok_loss.png",
        "MuseTok training",
        ("train_recons_loss", "valid_loss", "valid_token_acc"),
    )


if __name__ == "__main__":
    run_main(main)
