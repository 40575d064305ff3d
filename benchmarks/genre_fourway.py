"""Four-way genre task on real data: POP909 (pop), Nottingham (folk), VGMIDI (game) and the
music21 corpus's common-practice composers (classical), split by song.

Builds a temporary project (organize + tokenize, as stages 00-01 do), trains the phrase
classifier and the hierarchical model on the source as label, and reports them beside a
logistic regression that sees only file metadata (track count, programs, tempo, note density,
length). The four corpora differ in file layout as much as in music (POP909 has three piano
tracks, music21 conversions carry their instruments' programs...), so where the metadata
baseline matches a model, the model's score says little about music.

The hierarchical model runs over a frozen LM twice: a randomly initialised GPT of the trained
LM's shape (`hier_random_*`: its chunk embeddings are random features of the token sequence,
a control), and the trained one (`hier_trained_*`): `--lm FOLDER`, else the project's
models/generator when trained. With `--musetok FOLDER` (a trained models/musetok) the pieces
are also MuseTok-tokenized and stage 04 extracts their latents for the latent baseline (it
is skipped, and says why, when MuseTok rejects too many pieces: POP909's 1/4 first bars are
not in its vocabulary).

Prints one JSON line. Data root: MIDIPIPE_EXTERNAL_DATA (default ../shared/datasets).
    python benchmarks/genre_fourway.py --per-class 60 --epochs 6 [--lm models/generator]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, external_data  # noqa: E402

from midipipe.core.params import DataParams, OrganizeParams, Params, TokenizeParams, TrainParams
from midipipe.data.organize import organize  # noqa: E402
from midipipe.generator.gpt import GPT, GPTConfig, save_model  # noqa: E402
from midipipe.genre.hier_train import train_hier  # noqa: E402
from midipipe.genre.metrics import single_label_metrics  # noqa: E402
from midipipe.genre.params import GenreHierParams, GenreParams  # noqa: E402
from midipipe.genre.phrase_train import train_phrase  # noqa: E402
from midipipe.genre.phrases import spread  # noqa: E402
from midipipe.tokens import remi  # noqa: E402
from midipipe.tokens.tokenize import tokenize_corpus  # noqa: E402

log = logging.getLogger("genre_fourway")

CLASSICAL = [
    "bach",
    "corelli",
    "handel",
    "cpe-bach",
    "haydn",
    "mozart",
    "beethoven",
    "schubert",
    "schumann",
    "chopin",
]


def folder_source(name: str, root: Path, files: list[Path], song_of, tmp: Path) -> dict:
    """A `folder` source over `files` (a subset of `root`), songs grouped by `song_of(path)`."""
    listing = tmp / f"{name}.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "composer", "song"])
        for path in files:
            w.writerow([path.relative_to(root).as_posix(), "", song_of(path)])
    return {
        "kind": "folder",
        "name": name,
        "path": str(root),
        "composer_from": "csv",
        "metadata_csv": str(listing),
    }


def sources(data: Path, per_class: int, tmp: Path, workers: int) -> list[dict]:
    pop = sorted((data / "pop909").glob("[0-9]*/[0-9]*.mid"))
    folk = sorted((data / "nottingham").glob("*.mid"))
    game = sorted((data / "vgmidi" / "midi").glob("*.mid"))
    for name, files in (("pop909", pop), ("nottingham", folk), ("vgmidi/midi", game)):
        if not files:
            raise SystemExit(f"no MIDI files in {data / name}: set MIDIPIPE_EXTERNAL_DATA")

    def pick(files: list[Path]) -> list[Path]:
        return [files[i] for i in spread(len(files), per_class)]

    return [
        folder_source("pop", data / "pop909", pick(pop), lambda p: p.stem, tmp),
        folder_source("folk", data / "nottingham", pick(folk), lambda p: p.stem, tmp),
        # VGMIDI has happy / sad arrangements of one tune: one song
        folder_source(
            "game",
            data / "vgmidi" / "midi",
            pick(game),
            lambda p: re.sub(r" (Happy|Sad)$", "", p.stem),
            tmp,
        ),
        {
            "kind": "music21",
            "name": "classical",
            "selection": CLASSICAL,
            "max_per_group": max(1, -(-per_class // 6)),
            "workers": workers,
        },
    ]


def build_project(root: Path, data: Path, per_class: int, workers: int, musetok: bool) -> dict:
    params = Params(
        data=DataParams(sources(data, per_class, root, workers)),
        organize=OrganizeParams(valid_frac=0.15, test_frac=0.2, workers=workers),
        tokenize=TokenizeParams(workers=workers, musetok=musetok),
    )
    summary = organize(params, root / "data")
    tokens = tokenize_corpus(root / "data", params.tokenize)
    return {"organized": summary["pieces"], "rejects": tokens.rejects}


def extract_latents(root: Path, musetok: Path) -> None:
    """Stage 04 run in the project at `root`, with the MuseTok model in `musetok`."""
    shutil.copytree(musetok, root / "models" / "musetok", dirs_exist_ok=True)
    (root / "params.yaml").write_text("latents: {}\n")
    script = ROOT / "stages" / "04_extract_latents.py"
    subprocess.run([sys.executable, str(script)], cwd=root, check=True)


def random_lm(root: Path, tokens_dir: Path, like: Path | None) -> Path:
    """A randomly initialised GPT over this project's vocabulary: the trained LM's shape when
    there is one (so only training differs), else cpu_default."""
    tokenizer = remi.load_tokenizer(tokens_dir / "tokenizer.json")
    if like is not None:
        config = GPTConfig.from_dict(json.loads((like / "config.json").read_text()))
    else:
        config = GPTConfig.cpu_default(
            vocab_size=len(tokenizer.vocab), pad_id=tokenizer.pad_token_id
        )
    torch.manual_seed(0)
    save_model(GPT(config), root / "random_lm")
    return root / "random_lm"


def hier_scores(
    name: str, lm_dir: Path, root: Path, manifest: list[dict], args, latents: Path | None
) -> dict:
    """The hierarchical model over the LM in `lm_dir`, trained on the source as its one tag,
    scored as a single-label classifier beside the baselines on the same pieces."""
    data = root / "data"
    hp = GenreHierParams(min_tag_pieces=2, max_chunks=args.chunks_per_piece, patience=5)
    tp = TrainParams(lr=1e-3, batch_size=16, epochs=30, device="cpu", precision="fp32")
    t0 = time.perf_counter()
    r = train_hier(
        hp,
        tp,
        data / "tokens" / "remi",
        data / "manifest.parquet",
        root / f"genre_hier_{name}",
        root / f"ckpt_hier_{name}",
        lm_dir,
        tags={row["piece_id"]: [row["source"]] for row in manifest},
        corpus_dir=data / "corpus",
        latents_dir=latents,
    )
    m, key = r.metrics, f"hier_{name}"
    if r.test_probs is None:
        return {f"{key}_status": m.get("reason")}
    got = single_label_metrics(r.test_y.argmax(1), r.test_probs, r.tags)  # one tag: the class
    assert np.allclose(got["accuracy"], m["test_acc"])
    out = {
        f"{key}_lm": str(lm_dir),
        f"{key}_piece_accuracy": got["accuracy"],
        f"{key}_piece_macro_f1": got["macro_f1"],
        f"{key}_micro_f1": m["micro_f1"],
        f"{key}_truncation_rate": m["truncation_rate"],
        f"{key}_epochs_run": m["epochs_run"],
        f"{key}_s": round(time.perf_counter() - t0, 1),
    }
    for base in ("metadata", "latent"):
        if f"{base}_baseline_test_acc" in m:
            out[f"{key}_{base}_baseline_test_acc"] = m[f"{base}_baseline_test_acc"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=60, help="pieces per class (cap)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--phrases-per-piece", type=int, default=8)
    ap.add_argument("--chunks-per-piece", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lm", default=None, help="trained LM folder for the hierarchical model")
    ap.add_argument("--musetok", default=None, help="trained MuseTok folder: latent baseline")
    ap.add_argument("--keep", default=None, help="build the project here and keep it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    root = Path(args.keep or tempfile.mkdtemp(prefix="genre_fourway-"))
    root.mkdir(parents=True, exist_ok=True)
    built = build_project(root, external_data(), args.per_class, args.workers, bool(args.musetok))
    latents = None
    if args.musetok:
        extract_latents(root, Path(args.musetok))
        latents = root / "data" / "latents"
    t_build = time.perf_counter() - t0
    data, tokens = root / "data", root / "data" / "tokens" / "remi"
    manifest = pq.read_table(
        data / "manifest.parquet", columns=["piece_id", "source", "split"]
    ).to_pylist()
    per_class = Counter(r["source"] for r in manifest)
    test_pieces = Counter(r["source"] for r in manifest if r["split"] == "test")

    tp = TrainParams(lr=1e-3, batch_size=32, epochs=args.epochs, device="cpu", precision="fp32")
    p = GenreParams(
        label="source", min_class_pieces=2, patience=3, max_phrases_per_piece=args.phrases_per_piece
    )
    t1 = time.perf_counter()
    phrase = train_phrase(
        p,
        tp,
        tokens,
        data / "manifest.parquet",
        root / "genre_phrase",
        root / "ckpt_phrase",
        data / "corpus",
        latents,
    )
    t_phrase = time.perf_counter() - t1
    m = phrase.metrics
    out = {
        "bench": "genre_fourway",
        "per_class_cap": args.per_class,
        "pieces": dict(per_class),
        "test_pieces": dict(test_pieces),
        **built,
        "classes": m["classes"],
        "phrase_accuracy": m["accuracy"],
        "phrase_macro_f1": m["macro_f1"],
        "phrase_piece_accuracy": m["piece_accuracy"],
        "phrase_piece_macro_f1": m["piece_macro_f1"],
        "phrase_song_accuracy": m["song_accuracy"],
        "phrase_song_macro_f1": m["song_macro_f1"],
        "phrase_truncation_rate": m["truncation_rate"],
        "phrase_best_epoch": m["best_epoch"],
        "phrase_epochs_run": m["epochs_run"],
        **{k: v for k, v in m.items() if "_baseline" in k},
    }
    trained = Path(args.lm) if args.lm else ROOT / "models" / "generator"
    if not (trained / "config.json").exists():
        out["hier_trained_status"] = f"no trained LM: {trained} has no config.json"
        trained = None
    lms = {"random": random_lm(root, tokens, trained)}
    if trained is not None:
        lms["trained"] = trained
    for name, lm_dir in lms.items():
        out.update(hier_scores(name, lm_dir, root, manifest, args, latents))
    out.update(
        build_s=round(t_build, 1),
        phrase_train_s=round(t_phrase, 1),
        total_s=round(time.perf_counter() - t0, 1),
        torch_threads=torch.get_num_threads(),
        project=str(root) if args.keep else None,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
