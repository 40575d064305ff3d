"""Stage 10 end to end: GigaMIDI-shaped Parquet bytes -> per-bar valence/arousal, on this machine.

Builds a Parquet in GigaMIDI's schema from real MIDI (every corpus under MIDIPIPE_EXTERNAL_DATA,
default ../shared/datasets: POP909, Nottingham, VGMIDI, EMOPIA, ASAP, MidiTok's test files,
drawn evenly) plus bad rows (garbage, truncated, empty, null bytes), a randomly initialised
MuseTok of `--size` and a random emotion MLP on `--input` (default: `emotion.mlp.input`'s
default, with the cues fallback stage 07 trains beside it), or the rule estimator, then times
`annotate.run.annotate`: bars/s end to end, seconds per phase, peak RSS of the process tree
(main + workers, sampled), the share of parseable files annotated (parseable: symusic reads
notes), and the hours all of GigaMIDI v2 would take at that rate.

Baselines in the same run: `--baseline` annotates the same rows a second time with the encoder
in today's input-order batches (`encode_pieces(pack=False)`, patched in here only), for the
packing speedup and the padded share before and after. `--engine both` runs the Ray engine
after the local one (a local cluster of `--workers` CPUs), for their ratio.

Phases: `read`, `encoder`, `regressor` and `write` are wall seconds in the main process;
`parse`, `events` and `cues` run in the worker processes and are summed over them (CPU
seconds), so they overlap the main process's phases and can exceed the wall time.
Weights are random: the speed of a trained model of the same size is the same.

Projection: songs x mean bars per song (from this sample) / bars/s. GigaMIDI v2.0.0 is the
extended release, "over 2.1 million unique MIDI files" (GigaMIDI README); the original paper
counts "over 1.4 million" (v1.0.0): both projections are printed. GigaMIDI files are multi-track
songs, longer than most of this sample, so the bar count is an assumption.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
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

from midipipe.annotate.params import AnnotateParams
from midipipe.annotate.run import annotate
from midipipe.core.io import write_json
from midipipe.data.midi import piece_id
from midipipe.data.organize import facts
from midipipe.data.store import SCHEMA, store_row
from midipipe.emotion import regressor, rules_config
from midipipe.emotion.regressor import MLPParams
from midipipe.emotion.rules import RuleParams
from midipipe.musetok import checkpoint, encode
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
CORPORA = ("pop909", "nottingham", "vgmidi", "emopia", "asap", "miditok-tests")


def sample_files(root: Path, n: int, seed: int) -> list[Path]:
    """n files drawn with `seed`, spread evenly over the corpora that exist (a small corpus
    gives all it has, the others make up the rest)."""
    pools = []
    for name in CORPORA:
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in (".mid", ".midi"))
        if files:
            pools.append(files)
    if not pools:
        raise SystemExit(f"no MIDI under {root}/{{{','.join(CORPORA)}}}")
    rng = random.Random(seed)
    for pool in pools:
        rng.shuffle(pool)
    files: list[Path] = []
    while len(files) < n and any(pools):
        for pool in pools:
            if pool and len(files) < n:
                files.append(pool.pop())
    return files


def bad_rows(files: list[Path], n: int) -> list[tuple[str, bytes | None]]:
    """n rows a real dump holds: garbage, truncated files, empty and null music."""
    kinds = [
        lambda k: b"not a midi file %d" % k,
        lambda k: files[k % len(files)].read_bytes()[: 40 + k],
        lambda k: b"",
        lambda k: None,
    ]
    return [(f"bad-{k:04d}", kinds[k % len(kinds)](k)) for k in range(n)]


def build_parquet(files: list[Path], n_bad: int, path: Path) -> tuple[int, int]:
    """The Parquet, and how many of its rows symusic parses (with notes)."""
    rows, parseable = [], 0
    for f in files:
        data = f.read_bytes()
        got = facts(data)
        parseable += "parse_error" not in got
        meta = {"piece_id": piece_id(data), "split": "train", "original": f.name, **got}
        rows.append(store_row({**meta, "genres": [f.relative_to(external_data()).parts[0]]}, data))
    for k, (key, music) in enumerate(bad_rows(files, n_bad)):
        rows.insert(k * len(rows) // max(1, n_bad), {"split": "train", "md5": key, "music": music})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=64)
    return len(rows), parseable


def make_models(folder: Path, size: str, estimator: str, name: str) -> tuple[Path, Path]:
    torch.manual_seed(0)
    cfg = SIZES[size]()
    checkpoint.save(MuseTok(cfg).eval(), folder / "musetok")
    if estimator == "rules":
        write_json(folder / "emotion" / "config.json", rules_config(RuleParams()))
        return folder / "musetok", folder / "emotion"
    extra = {"cue_window": RuleParams().window}
    inputs = {folder / "emotion": name}
    if regressor.latent_of(name) is not None:
        inputs[folder / "emotion" / "fallback"] = regressor.CUES
    for out, mlp_input in inputs.items():
        mlp = MLPParams(input=mlp_input)
        mlp_cfg = regressor.MLPConfig(
            input=mlp_input,
            width=regressor.input_width(mlp_input, cfg),
            codebook_size=cfg.codebook_size,
            window=mlp.window,
            hidden=mlp.hidden,
        )
        regressor.save(regressor.EmotionMLP(mlp_cfg).eval(), out, extra)
    return folder / "musetok", folder / "emotion"


def timed(p: AnnotateParams, out: Path) -> tuple[dict, float, float]:
    """One run: its metrics, wall seconds and the process tree's peak RSS (MB)."""
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        report = annotate(p, out, progress=False)
        wall = time.perf_counter() - t0
    return report.metrics(), wall, rss.peak_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--songs", type=int, default=1000, help="real MIDI files")
    ap.add_argument("--bad", type=int, default=20, help="bad rows mixed in")
    ap.add_argument("--size", choices=list(SIZES), default="cpu_default")
    ap.add_argument("--estimator", choices=["mlp", "rules"], default="mlp")
    ap.add_argument("--input", choices=regressor.INPUTS, default=MLPParams().input)
    ap.add_argument("--engine", choices=["local", "ray", "both"], default="local")
    ap.add_argument("--baseline", action="store_true", help="also run the unpacked encoder")
    ap.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    ap.add_argument("--batch-size", type=int, default=256, help="encoder bars per pass")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="annotate.torch_threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    out: dict = {"benchmark": "annotate"}
    with tempfile.TemporaryDirectory(prefix="bench_annotate_") as tmp:
        tmp = Path(tmp)
        files = sample_files(external_data(), args.songs, args.seed)
        n_rows, parseable = build_parquet(files, args.bad, tmp / "giga.parquet")
        musetok, emotion = make_models(tmp, args.size, args.estimator, args.input)
        p = AnnotateParams(
            name="bench", parquet=str(tmp / "giga.parquet"), musetok=str(musetok),
            emotion=str(emotion), workers=args.workers, batch_size=args.batch_size,
            device=args.device, torch_threads=args.threads, ray_actors=1,
            ray_workers=max(1, (os.cpu_count() or 2) - 1), ray_cpus=args.workers or 0,
        )  # fmt: skip
        runs = {}
        if args.engine in ("local", "both"):
            runs["local"] = timed(p, tmp / "local")
        if args.baseline:  # today's encoder: bars batched in input order (benchmark only)
            packed = encode.encode_pieces
            encode.encode_pieces = functools.partial(packed, pack=False)
            try:
                runs["unpacked"] = timed(p, tmp / "unpacked")
            finally:
                encode.encode_pieces = packed
        if args.engine in ("ray", "both"):
            import ray

            ray.init(num_cpus=args.workers or None, include_dashboard=False, log_to_driver=False)
            try:
                runs["ray"] = timed(AnnotateParams(**{**p.__dict__, "engine": "ray"}), tmp / "ray")
            finally:
                ray.shutdown()
    first = next(iter(runs))
    m = runs[first][0]
    n_params = sum(x.numel() for x in MuseTok(SIZES[args.size]()).parameters())
    mean_bars = m["mean_bars_per_song"]
    out.update({
        "estimator": m["estimator"],
        "input": args.input if args.estimator == "mlp" else None,
        "musetok_size": args.size,
        "musetok_params_m": round(n_params / 1e6, 2),
        "device": args.device,
        "batch_size": args.batch_size,
        "rows": n_rows,
        "bad_rows": args.bad,
        "parseable": parseable,
        "songs_ok": m["songs_ok"],
        "annotated_share_of_parseable": round(m["songs_ok"] / max(1, parseable), 4),
        "songs_failed": m["songs_failed"],
        "failed_reasons": {k[7:]: v for k, v in m.items() if k.startswith("failed_")},
        "songs_fallback": m["songs_fallback"],
        "bars_fallback": m["bars_fallback"],
        "bars": m["bars"],
        "mean_bars_per_song": round(mean_bars, 1),
    })  # fmt: skip
    for name, (metrics, wall, peak) in runs.items():
        bars_per_s = metrics["bars"] / wall
        out[name] = {
            "engine": metrics["engine"],
            "workers": metrics["workers"],
            "wall_s": round(wall, 2),
            "bars_per_s": round(bars_per_s, 1),
            "songs_per_s": round(metrics["songs"] / wall, 2),
            "encoder_bars": metrics["encoder_bars"],
            "encoder_bars_per_s": round(metrics["encoder_bars_per_s"], 1),
            "encoder_padded_share": round(metrics["encoder_padded_share"], 4),
            **{k: round(v, 2) for k, v in metrics.items() if k.startswith("seconds_")},
            "peak_rss_tree_mb": peak,
            "peak_rss_main_mb": metrics["peak_rss_main_mb"],
            "projected_hours_v2_2_1M_songs": round(V2_SONGS * mean_bars / bars_per_s / 3600, 1),
            "projected_hours_v1_1_4M_songs": round(V1_SONGS * mean_bars / bars_per_s / 3600, 1),
        }
    for name in ("unpacked", "ray"):
        if name in out and first != name:
            out[f"{first}_over_{name}_bars_per_s"] = round(
                out[first]["bars_per_s"] / out[name]["bars_per_s"], 2
            )
    if "unpacked" in out and out["unpacked"]["encoder_bars_per_s"]:
        out["encoder_speedup_packed_over_unpacked"] = round(
            out[first]["encoder_bars_per_s"] / out["unpacked"]["encoder_bars_per_s"], 2
        )
    out.update({
        "projection_note": "songs x this sample's mean bars per song / bars_per_s, one machine",
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads or torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
    })  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
