"""Real-data benchmark suite: every task run as a user would run the pipeline on that corpus,
each learned model beside a majority baseline and the hand-crafted one
(`midipipe.evaluation.features`: musical statistics into a logistic regression).

Tasks:
- `emopia`: EMOPIA 4-quadrant, binary valence and arousal, on the official val split (stages
  00-04 + 07 on a project whose `data.sources` is the `emopia` adapter);
- `asap`: composer on ASAP scores (`--asap-files performances`: the renditions), grouped by
  work (`folder`), stage 05 trained afresh each run;
- `vgmidi`: per-bar valence/arousal CCC, piece-grouped folds (`bench_emotion_vgmidi.py`);
- `fourway`: the four-way source task (`genre_fourway.py`).

`--pretrained DIR` (`make pretrain-musetok`'s models/pretrained/musetok) adds, for emopia and
vgmidi, a second row on that MuseTok's latents (`pretrained` in the JSON line), and gives the
four-way task its latents for the latent baseline.

Each project is built under `--work` (default /tmp/midipipe-bench-real) and reused by later
runs (one built before the corpus store, without `data/corpus`, is rebuilt).
One JSON line per task on stdout.
    python benchmarks/bench_real.py --tasks emopia asap [--budget-s 300]
    python benchmarks/bench_real.py --tasks emopia vgmidi --pretrained models/pretrained/musetok
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, external_data  # noqa: E402

from midipipe.core import params as params_mod  # noqa: E402
from midipipe.core.params import DataParams  # noqa: E402
from midipipe.data.organize import organize  # noqa: E402
from midipipe.emotion import EmotionParams  # noqa: E402
from midipipe.emotion.train import EmotionPaths, train_emotion  # noqa: E402
from midipipe.genre.params import PROFILES as GENRE_PROFILES  # noqa: E402
from midipipe.genre.params import GenreParams  # noqa: E402
from midipipe.genre.phrase_train import train_phrase  # noqa: E402
from midipipe.musetok.latents import LatentParams, extract_latents  # noqa: E402
from midipipe.musetok.train import PROFILES as MUSETOK_PROFILES  # noqa: E402
from midipipe.musetok.train import MuseTokTrainParams, train_musetok  # noqa: E402
from midipipe.tokens.tokenize import tokenize_corpus  # noqa: E402

log = logging.getLogger("bench_real")
TASKS = ("emopia", "asap", "vgmidi", "fourway")


def project_params(sources: list[dict], workers: int, **split):
    """params.yaml as a user has it, with `data.sources` naming the corpus."""
    p = params_mod.load(ROOT / "params.yaml")
    p.data = DataParams(sources=sources)
    p.organize = dataclasses.replace(p.organize, workers=workers, **split)
    p.tokenize = dataclasses.replace(p.tokenize, workers=workers)
    return p


def build(root: Path, sources: list[dict], workers: int, musetok: dict | None, **split) -> dict:
    """Stages 00-01 (and 03-04 with `musetok`) into `root`, skipped where already done."""
    data = root / "data"
    if data.is_dir() and not (data / "corpus").is_dir():  # built before the corpus store
        log.warning("%s predates the corpus store: rebuilding it", root)
        shutil.rmtree(root)
    if not (data / "tokens" / "remi" / "tokenizer.json").exists():
        p = project_params(sources, workers, **split)
        organize(p, data)
        tokenize_corpus(data, p.tokenize)
    info = {"pieces": pq.read_metadata(data / "manifest.parquet").num_rows}
    if musetok:
        models = root / "models" / "musetok"
        if not (models / "config.json").exists():
            mp = params_mod.profiled(
                MuseTokTrainParams, ROOT / "params.yaml", "musetok", MUSETOK_PROFILES
            )
            if musetok["max_pieces"] is not None:
                mp = dataclasses.replace(mp, max_pieces=musetok["max_pieces"])
            epochs = {} if musetok["epochs"] is None else {"epochs": musetok["epochs"]}
            tp = params_mod.merged_train(
                params_mod.load(ROOT / "params.yaml"), {**mp.train, **epochs}
            )
            run = train_musetok(
                mp,
                tp,
                data / "tokens" / "musetok",
                data / "manifest.parquet",
                models,
                root / "checkpoints" / "musetok",
            )
            budget = {"musetok_epochs": tp.epochs, "musetok_max_pieces": mp.max_pieces}
            (root / "musetok.json").write_text(json.dumps({**run.metrics, **budget}))
        if not (data / "latents" / "index.parquet").exists():
            extract_latents(LatentParams(), models, data / "tokens" / "musetok", data / "latents")
        info["musetok"] = json.loads((root / "musetok.json").read_text())
    return info


def emopia_sources(data: Path) -> list[dict]:
    return [{"kind": "emopia", "name": "emopia", "path": str(data / "emopia")}]


def asap_sources(data: Path, root: Path, files: str) -> list[dict]:
    """ASAP by composer, each work (`folder`) one song: a work's score and renditions never
    straddle splits. `files`: `scores` (one per work) or `performances`."""
    listing = root / f"asap_{files}.csv"
    root.mkdir(parents=True, exist_ok=True)
    with (data / "asap" / "metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    column = "midi_score" if files == "scores" else "midi_performance"
    listed = {r[column]: r for r in rows}  # a score is listed once per performance
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "composer", "song"])
        for path, r in sorted(listed.items()):
            w.writerow([path, r["composer"], r["folder"]])
    return [
        {
            "kind": "folder",
            "name": "asap",
            "path": str(data / "asap"),
            "composer_from": "csv",
            "metadata_csv": str(listing),
        }
    ]


def run_emopia(
    root: Path, folds: int, musetok: Path | None = None, tag: str = "pretrained"
) -> dict:
    """Stage 07 as params.yaml sets it (one MLP input and `folds` folds: CPU budget), on the
    latents of the project's MuseTok, or of `musetok` (e.g. models/pretrained/musetok: its
    latents are extracted beside the project's, and its run writes apart)."""
    p = params_mod.build(
        EmotionParams, params_mod.section(ROOT / "params.yaml", "emotion"), "emotion"
    )
    p = dataclasses.replace(p, compare_inputs=False, folds=folds)
    tp = params_mod.merged_train(params_mod.load(ROOT / "params.yaml"), p.train)
    data, metrics, suffix = root / "data", root / "metrics", ""
    latents, musetok_dir = data / "latents", root / "models" / "musetok"
    if musetok is not None:  # its own latents, models and metrics: `<name>_<tag>`
        musetok_dir, suffix = musetok, f"_{tag}"
        latents, metrics = data / f"latents{suffix}", root / f"metrics{suffix}"
        if not (latents / "index.parquet").exists():
            extract_latents(LatentParams(), musetok, data / "tokens" / "musetok", latents)
    io = EmotionPaths(
        manifest=str(data / "manifest.parquet"),
        bar_va=str(data / "labels" / "bar_va.parquet"),
        tokens=str(data / "tokens" / "musetok"),
        corpus=str(data / "corpus"),
        latents=str(latents),
        musetok=str(musetok_dir),
        out=root / "models" / f"emotion{suffix}",
        metrics=str(metrics / "emotion.json"),
        kfold_csv=str(metrics / "emotion_kfold.csv"),
        curves_csv=str(metrics / "emotion_curves.csv"),
        curves_png=str(metrics / "emotion_curves.png"),
    )
    train_emotion(p, tp, io)
    m = json.loads((metrics / "emotion.json").read_text())
    keys = [  # the per-weight choice scores stay in the metrics file
        k
        for k in m
        if (k.endswith("_accuracy") or k.startswith(("quadrant_", "handcrafted_c", "factorised_")))
        and not k.endswith("_loglik")
    ]
    return {
        "input": m["input"],
        "eval_split": m.get("eval_split"),
        **{k: m[k] for k in keys},
        **{k: m[k] for k in m if k.startswith("kfold_") and "ccc" in k},
    }


def run_asap(root: Path, budget_s: float, epochs: int) -> dict:
    """Stage 05 with `genre.label: composer`, every phrase of every piece, `budget_s` of
    training, beside its baselines."""
    p = params_mod.profiled(GenreParams, ROOT / "params.yaml", "genre", GENRE_PROFILES)
    p = dataclasses.replace(p, label="composer", budget_s=budget_s, max_phrases_per_piece=0)
    tp = params_mod.merged_train(
        params_mod.load(ROOT / "params.yaml"), {**p.train, "epochs": epochs}
    )
    data = root / "data"
    shutil.rmtree(root / "checkpoints" / "genre_phrase", ignore_errors=True)  # no resume
    r = train_phrase(
        p,
        tp,
        data / "tokens" / "remi",
        data / "manifest.parquet",
        root / "models" / "genre_phrase",
        root / "checkpoints" / "genre_phrase",
        data / "corpus",
        data / "latents",
    )
    m = r.metrics
    keys = ("n_classes", "eval_split", "pieces_train", "pieces_test", "phrases_train", "epochs_run")
    return {
        **{k: m[k] for k in keys},
        "piece_accuracy": m["piece_accuracy"],
        "piece_macro_f1": m["piece_macro_f1"],
        **{k: v for k, v in m.items() if "baseline" in k or k.startswith("served")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/midipipe-bench-real"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--asap-files", choices=("scores", "performances"), default="scores")
    ap.add_argument("--folds", type=int, default=0, help="emotion regressor k-fold (0: none)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="genre.budget_s (asap)")
    ap.add_argument("--epochs", type=int, default=30, help="asap: most epochs in the budget")
    # params.yaml's MuseTok budget unless set: what `dvc repro` trains for the user (EMOPIA:
    # ~10 min on 2 cores; the earlier 2 epochs of 400 clips collapsed its codebooks)
    ap.add_argument("--musetok-epochs", type=int, default=None, help="default: params.yaml's")
    ap.add_argument("--musetok-pieces", type=int, default=None, help="pieces per epoch (0: all)")
    ap.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="also run emopia and vgmidi on this MuseTok (make pretrain-musetok's "
        "models/pretrained/musetok): a second row each",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)  # shared cores: spare threads only spin
    data = external_data()
    musetok = {"epochs": args.musetok_epochs, "max_pieces": args.musetok_pieces}
    for task in args.tasks:
        t0 = time.perf_counter()
        root = args.work / (f"asap_{args.asap_files}" if task == "asap" else task)
        if task in ("vgmidi", "fourway"):
            name = "bench_emotion_vgmidi.py" if task == "vgmidi" else "genre_fourway.py"
            if task == "vgmidi":
                extra = ["--work", str(args.work / "vgmidi")]
                extra += ["--pretrained", str(args.pretrained)] if args.pretrained else []
            else:  # the pretrained MuseTok's latents feed the four-way latent baseline
                extra = ["--musetok", str(args.pretrained)] if args.pretrained else []
            cmd = [sys.executable, str(ROOT / "benchmarks" / name), *extra]
            subprocess.run(cmd, check=True)
            continue
        if task == "emopia":
            info = build(root, emopia_sources(data), args.workers, musetok)
        else:
            sources = asap_sources(data, root, args.asap_files)
            info = build(root, sources, args.workers, None, test_frac=0.2)
        info["build_s"] = round(time.perf_counter() - t0, 1)
        if not args.build_only:
            t1 = time.perf_counter()
            if task == "emopia":
                info.update(run_emopia(root, args.folds))
                if args.pretrained:
                    info["pretrained"] = run_emopia(root, args.folds, args.pretrained)
            else:
                info.update(run_asap(root, args.budget_s, args.epochs))
            info["run_s"] = round(time.perf_counter() - t1, 1)
        print(json.dumps({"bench": f"real_{task}", **info}), flush=True)


if __name__ == "__main__":
    main()
