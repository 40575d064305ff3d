"""Stage 10 end to end: GigaMIDI-shaped Parquet bytes -> per-bar valence/arousal, on this machine.

Builds a Parquet in GigaMIDI's schema from real MIDI (POP909 and Nottingham under
MIDIPIPE_EXTERNAL_DATA, default ../shared/datasets), a randomly initialised MuseTok of `--size`
and a random emotion MLP on `--input` (default: `emotion.mlp.input`'s default), or the rule
estimator, then times `annotate.annotate` (local
engine) over it: bars/s end to end, seconds per phase, peak RSS of the process tree (main +
workers, sampled), and the hours all of GigaMIDI v2 would take at that rate.

Phases: `read` (Parquet batches -> rows), `encoder`, `regressor` and `write` are wall seconds in
the main process; `parse`, `events`, `rules` and `cues` run in the worker processes and are
summed over them (CPU seconds), so they overlap the main process's phases and can exceed the
wall time.
Weights are random: the speed of a trained model of the same size is the same.

Projection: songs x mean MuseTok bars per song (from this sample) / bars/s. GigaMIDI v2.0.0 is
the extended release, "over 2.1 million unique MIDI files" (GigaMIDI README); the original
paper counts "over 1.4 million" (v1.0.0): both projections are printed. GigaMIDI files are
multi-track songs, longer than most of this sample, so the bar count is an assumption.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from midipipe.annotate.annotator import AnnotateParams, annotate
from midipipe.annotate.gigamidi_export import SCHEMA, midi_facts
from midipipe.core.io import write_json
from midipipe.data.midi import piece_id
from midipipe.emotion import regressor, rules_config
from midipipe.emotion.regressor import MLPParams
from midipipe.emotion.rules import RuleParams
from midipipe.musetok import checkpoint
from midipipe.musetok.model import MuseTok, MuseTokConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, external_data  # noqa: E402

SIZES = {
    "cpu_default": MuseTokConfig.cpu_default,
    "small": MuseTokConfig.small,
    "large": MuseTokConfig.large,
    "official": MuseTokConfig.official,
}
V2_SONGS = 2_100_000  # extended GigaMIDI (v2.0.0), README: "over 2.1 million unique MIDI files"
V1_SONGS = 1_400_000  # GigaMIDI paper (v1.0.0): "over 1.4 million unique MIDI files"


def sample_files(root: Path, n: int, seed: int) -> list[Path]:
    """n files, half POP909 and half Nottingham (or whichever exists), drawn with `seed`."""
    pools = [sorted((root / "pop909").rglob("*.mid")), sorted((root / "nottingham").rglob("*.mid"))]
    pools = [p for p in pools if p]
    if not pools:
        raise SystemExit(f"no MIDI under {root}/pop909 or {root}/nottingham")
    rng = random.Random(seed)
    files: list[Path] = []
    for k, pool in enumerate(pools):
        take = n // len(pools) + (k < n % len(pools))
        files += rng.sample(pool, min(take, len(pool)))
    return files


def build_parquet(files: list[Path], path: Path) -> int:
    rows = []
    for f in files:
        data = f.read_bytes()
        rows.append({
            "split": "train", "md5": piece_id(data), "music": data, **midi_facts(data),
            "music_styles_curated": [f.parent.name if "pop909" in str(f) else "folk"],
            "music_style_scraped": "", "music_style_audio_text_Discogs": [],
            "music_style_audio_text_Lastfm": [], "music_style_audio_text_Tagtraum": [],
            "title": f.stem, "artist": "",
        })  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=64)
    return path.stat().st_size


def make_models(folder: Path, size: str, estimator: str, name: str) -> tuple[Path, Path]:
    torch.manual_seed(0)
    cfg = SIZES[size]()
    checkpoint.save(MuseTok(cfg).eval(), folder / "musetok")
    if estimator == "rules":
        write_json(folder / "emotion" / "config.json", rules_config(RuleParams()))
    else:
        mlp = MLPParams(input=name)
        mlp_cfg = regressor.MLPConfig(
            input=name,
            width=regressor.input_width(name, cfg),
            codebook_size=cfg.codebook_size,
            window=mlp.window,
            hidden=mlp.hidden,
        )
        extra = {"cue_window": RuleParams().window}
        regressor.save(regressor.EmotionMLP(mlp_cfg).eval(), folder / "emotion", extra)
    return folder / "musetok", folder / "emotion"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--songs", type=int, default=200)
    ap.add_argument("--size", choices=list(SIZES), default="cpu_default")
    ap.add_argument("--estimator", choices=["mlp", "rules"], default="mlp")
    ap.add_argument("--input", choices=regressor.INPUTS, default=MLPParams().input)
    ap.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    ap.add_argument("--batch-size", type=int, default=256, help="bars per encoder pass")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_annotate_") as tmp:
        tmp = Path(tmp)
        files = sample_files(external_data(), args.songs, args.seed)
        parquet_bytes = build_parquet(files, tmp / "giga.parquet")
        musetok, emotion = make_models(tmp, args.size, args.estimator, args.input)
        p = AnnotateParams(
            name="bench", parquet=str(tmp / "giga.parquet"), musetok=str(musetok),
            emotion=str(emotion), workers=args.workers, batch_size=args.batch_size,
            device=args.device,
        )  # fmt: skip
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            report = annotate(p, tmp / "out", progress=False)
            wall = time.perf_counter() - t0
    m = report.metrics()
    n_params = sum(x.numel() for x in MuseTok(SIZES[args.size]()).parameters())
    bars_per_s = m["bars"] / wall
    mean_bars = m["mean_bars_per_song"]
    out = {
        "benchmark": "annotate",
        "engine": "local",
        "estimator": m["estimator"],
        "input": args.input if args.estimator == "mlp" else None,
        "musetok_size": args.size,
        "musetok_params_m": round(n_params / 1e6, 2),
        "device": args.device,
        "workers": m["workers"],
        "batch_size": args.batch_size,
        "songs": m["songs"],
        "songs_failed": m["songs_failed"],
        "bars": m["bars"],
        "parquet_mb": round(parquet_bytes / 2**20, 2),
        "wall_s": round(wall, 2),
        "bars_per_s": round(bars_per_s, 1),
        "songs_per_s": round(m["songs"] / wall, 2),
        "mean_bars_per_song": round(mean_bars, 1),
        **{k: round(v, 2) for k, v in m.items() if k.startswith("seconds_")},
        "peak_rss_tree_mb": rss.peak_mb,
        "peak_rss_main_mb": m["peak_rss_main_mb"],
        "projected_hours_v2_2_1M_songs": round(V2_SONGS * mean_bars / bars_per_s / 3600, 1),
        "projected_hours_v1_1_4M_songs": round(V1_SONGS * mean_bars / bars_per_s / 3600, 1),
        "projection_note": "songs x this sample's mean bars per song / bars_per_s, one machine",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
