"""Bar-level valence/arousal on VGMIDI: the MLP on each input (the three MuseTok latents, the
cues of `rules.bar_cues`, and the quantized latent beside the cues) vs the rule estimate vs the
mean predictor, piece-grouped k-fold over every VGMIDI piece with listener traces. The winning
input (`best_input`) is the one stage 07 serves with these params.

Builds everything in a work folder from `$MIDIPIPE_EXTERNAL_DATA/vgmidi` (default
../shared/datasets): organize, tokenize, a small MuseTok (`cpu_default`) trained on these pieces
(self-supervised, test folds included), per-bar inputs, then the k-fold. The same k-fold on the
latents of a randomly initialised MuseTok (every input that reads a latent) is the "do trained
latents help" control. `--pretrained DIR` adds the k-fold on the latents of that MuseTok
(`make pretrain-musetok`'s models/pretrained/musetok, trained on a union of corpora).

Prints one JSON line: per-fold-mean CCC / r / RMSE / sign accuracy per estimator and axis,
and the winning MLP input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import external_data  # noqa: E402

from midipipe.core.device import seed_everything  # noqa: E402
from midipipe.core.params import DataParams, OrganizeParams, Params, TokenizeParams, merged_train
from midipipe.data.organize import organize  # noqa: E402
from midipipe.data.store import Corpus  # noqa: E402
from midipipe.emotion import EmotionParams  # noqa: E402
from midipipe.emotion.evaluate import cross_validate, summarize  # noqa: E402
from midipipe.emotion.regressor import INPUTS, assemble, encode_inputs, latent_of  # noqa: E402
from midipipe.emotion.targets import collect, read_labels  # noqa: E402
from midipipe.musetok import checkpoint  # noqa: E402
from midipipe.musetok import train as mt  # noqa: E402
from midipipe.musetok.model import MuseTok, MuseTokConfig  # noqa: E402
from midipipe.tokens.shards import tokens_by_split  # noqa: E402
from midipipe.tokens.tokenize import tokenize_corpus  # noqa: E402
from midipipe.training.fit import Fit, fit

log = logging.getLogger("bench_emotion_vgmidi")
KEYS = [f"{m}_{a}" for m in ("ccc", "r", "rmse", "sign_acc") for a in ("valence", "arousal")]


def build_data(work: Path, vgmidi: Path, workers: int) -> None:
    """organize + tokenize VGMIDI into `work` (skipped when already there)."""
    if (work / "data" / "tokens" / "musetok").is_dir():
        return
    source = {"kind": "vgmidi", "name": "vgmidi", "path": str(vgmidi)}
    params = Params(data=DataParams(sources=[source]), organize=OrganizeParams(workers=workers))
    organize(params, work / "data")
    tokenize_corpus(work / "data", TokenizeParams(workers=workers))


def train_musetok(work: Path, epochs: int) -> dict:
    """A cpu_default MuseTok on every VGMIDI piece, as stage 03 trains it."""
    out = work / "musetok"
    if (out / "config.json").exists():
        return json.loads((work / "musetok.json").read_text())
    p = mt.MuseTokTrainParams(dec_seqlen=512)
    tp = merged_train(Params(), {"lr": 1e-3, "batch_size": 16, "epochs": epochs, "grad_clip": 0.5})
    data = tokens_by_split(work / "data" / "tokens" / "musetok", work / "data" / "manifest.parquet")
    pieces = [(ids, bars) for split in data.values() for _, ids, bars in split if bars]
    valid = pieces[:: max(1, len(pieces) // 24)]
    seed_everything(tp.seed)
    model = MuseTok(dataclasses.replace(MuseTokConfig.cpu_default(), dec_seqlen=p.dec_seqlen))
    job = Fit(
        model=model,
        train_batches=lambda epoch, rng: mt.train_batches(pieces, p, tp.batch_size, epoch, rng),
        steps_per_epoch=-(-len(pieces) // tp.batch_size),
        loss=lambda m, batch: mt.loss(m, batch, p.beta),
        evaluate=lambda m: mt.evaluate(m, valid, p, tp.batch_size),
    )
    fit(job, tp, work / "musetok_resume", save_best=lambda m: checkpoint.save(m, out))
    best = min(job.history, key=lambda h: h["valid_loss"])
    info = {
        "epochs": epochs,
        "pieces": len(pieces),
        "valid_loss": round(best["valid_loss"], 4),
        "valid_token_acc": round(best["valid_token_acc"], 4),
    }
    (work / "musetok.json").write_text(json.dumps(info))
    return info


def kfold(work: Path, musetok_dir: Path | None, p: EmotionParams, folds: int, names: tuple) -> dict:
    """The k-fold on `names`; `musetok_dir` encodes the inputs that read a latent."""
    tp = merged_train(Params(), p.train)
    data = work / "data"
    pieces = read_labels(data / "manifest.parquet", data / "labels" / "bar_va.parquet", p.targets)
    corpus = Corpus(data / "corpus", data / "manifest.parquet")
    bars = collect(pieces, data / "tokens" / "musetok", corpus, p.targets, p.rules)
    latents, codebook = {}, 0
    if musetok_dir is not None:
        latents, codebook = encode_inputs(musetok_dir, bars.tokens, "cpu")
    inputs = {name: assemble(name, latents, bars.cues) for name in names}
    everything = np.arange(len(bars.piece_ids))
    table = cross_validate(
        bars, everything, inputs, codebook, p.mlp, tp, list(names), folds, tp.seed
    )
    means, flat = summarize(table)
    return {
        "pieces": len(bars.piece_ids),
        "rated_bars": int(bars.rated.sum()),
        "best_input": flat.get("kfold_best_input"),
        "estimators": {
            r["label"]: {k: None if r[k] is None else round(r[k], 4) for k in KEYS} for r in means
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=external_data() / "vgmidi")
    ap.add_argument("--work", type=Path, default=None, help="keep (and reuse) the built data here")
    ap.add_argument(
        "--musetok-epochs", type=int, default=8, help="0: no MuseTok trained here (cue inputs)"
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--pretrained", type=Path, default=None, help="a pretrained MuseTok folder")
    ap.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    ap.add_argument("--no-random", action="store_true", help="skip the untrained-MuseTok control")
    ap.add_argument("--build-only", action="store_true", help="data and MuseTok, no k-fold")
    ap.add_argument("--epochs", type=int, default=None, help="MLP epochs (default: EmotionParams)")
    ap.add_argument("--loss", choices=("ccc", "mse"), default="ccc")
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2, help="organize/tokenize processes")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the MLP is tiny, and spare threads spin on busy CPUs)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-emotion-"))
    build_data(work, args.data, args.workers)
    musetok = train_musetok(work, args.musetok_epochs) if args.musetok_epochs else None
    if args.build_only:
        return
    p = EmotionParams()
    p.mlp.loss = args.loss
    if args.window is not None:
        p.mlp.window = args.window
    if args.epochs is not None:
        p.train = {**(p.train or {}), "epochs": args.epochs}
    with_latents = tuple(name for name in args.inputs if latent_of(name) is not None)
    here = args.inputs if musetok else [n for n in args.inputs if n not in with_latents]
    trained = kfold(work, work / "musetok" if musetok else None, p, args.folds, tuple(here))
    controls = {}
    if not args.no_random and with_latents:
        seed_everything(0)
        checkpoint.save(MuseTok(MuseTokConfig.cpu_default()).eval(), work / "musetok_random")
        controls["random_musetok"] = kfold(
            work, work / "musetok_random", p, args.folds, with_latents
        )
    if args.pretrained:
        controls["pretrained_musetok"] = kfold(work, args.pretrained, p, args.folds, with_latents)
    print(
        json.dumps(
            {
                "benchmark": "emotion_vgmidi",
                "folds": args.folds,
                "mlp": dataclasses.asdict(p.mlp),
                "mlp_train": p.train,
                "musetok": musetok,
                **trained,
                **{
                    name: {
                        "best_input": run["best_input"],
                        "estimators": {
                            k: v for k, v in run["estimators"].items() if k.startswith("mlp_")
                        },
                    }
                    for name, run in controls.items()
                },
                "pretrained": str(args.pretrained) if args.pretrained else None,
                "work": str(work),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
