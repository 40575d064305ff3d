"""The corpus at scale (issue 13): N distinct files through the DAG's first stages with DVC.

A synthetic corpus is cut from the real pieces in ../shared/datasets: each seed piece is
transposed and its tempo scaled, so every file has its own md5 (real music, real sizes). Bad
inputs sit inside it: a corrupted file, a zero-byte file, a file of millions of notes, and two
files that hang and crash whatever parses them (the `data.midi.FAULT_ENV` hook). A copy of the
project then runs `dvc repro` on it, stage by stage, as a user would, at each size:

- organize and tokenize wall time and files/s, and each stage's peak RSS and PSS (process
  tree; RSS counts pages forked workers share with their parent once per process, PSS once);
- one epoch of generator training (stage 08 with `epochs: 1`): its peak RSS;
- no-op `dvc repro` and `dvc status` times; the DVC cache size against the corpus size;
- the projection to GigaMIDI v2's 2.1M files (linear in files: both stages stream).

One JSON line; the smaller size is the baseline the larger one is compared with (RSS ratio,
files/s ratio). `--sizes 2000 10000` is a quick check; the issue's figures are 10k and 100k.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import symusic
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, copy_project, external_data  # noqa: E402

from midipipe.data.midi import FAULT_ENV, piece_id  # noqa: E402

log = logging.getLogger("bench_corpus_scale")
GIGAMIDI_V2 = 2_100_000
SEED_SOURCES = {  # source folder -> file pattern, each a "composer" of the synthetic corpus
    "pop909": "**/*.mid",
    "nottingham": "**/*.mid",
    "vgmidi": "midi/*.mid",
    "emopia": "midis/*.mid",
    "asap": "**/*.mid",
}
SHIFTS = range(-5, 7)  # 12 transpositions
MAX_SEED_NOTES = 20_000


def seed_files(root: Path, per_source: int) -> list[tuple[str, Path]]:
    out = []
    for source, pattern in SEED_SOURCES.items():
        files = sorted((root / source).glob(pattern))
        step = max(1, len(files) // per_source)
        out += [(source, f) for f in files[::step][:per_source]]
    return out


def _write_variants(job: tuple[str, str, list[int], str]) -> int:
    """Write variants `ks` of one seed file: transposition k % 12 (kept in the MIDI range,
    drums untouched) and tempo x (1 + 0.002 k)."""
    source, path, ks, out = job
    try:
        score = symusic.Score(path)
    except Exception:  # a broken seed is simply not used
        return 0
    if not 0 < score.note_num() <= MAX_SEED_NOTES:
        return 0
    folder = Path(out) / source
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for k in ks:
        variant = score.copy()
        for track in variant.tracks:
            pitches = [n.pitch for n in track.notes]
            if track.is_drum or not pitches:
                continue
            shift = min(max(SHIFTS[k % len(SHIFTS)], -min(pitches)), 127 - max(pitches))
            track.shift_pitch(shift, inplace=True)
        scale = 1.0 + 0.002 * k  # its own tempo: a distinct md5 even where a shift is clamped
        for tempo in variant.tempos:
            tempo.qpm = tempo.qpm * scale
        if not len(variant.tempos):
            variant.tempos.append(symusic.Tempo(0, 120.0 * scale))
        # variant number first: sorted, each stretch of files mixes every seed, at any size
        variant.dump_midi(str(folder / f"{k:04d}_{Path(path).stem}.mid"))
        written += 1
    return written


def build_corpus(out: Path, n_files: int, data: Path, workers: int) -> dict[str, str]:
    """`n_files` good variants plus the bad inputs; returns the md5s the fault hook targets."""
    seeds = seed_files(data, per_source=300)
    base, extra = divmod(n_files, len(seeds))  # every seed alike: the same mix at any size
    jobs = [
        (source, str(path), list(range(base + (i < extra))), str(out))
        for i, (source, path) in enumerate(seeds)
    ]
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(_write_variants, jobs, chunksize=4))
    bad = out / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "zero_bytes.mid").write_bytes(b"")
    good = next((out / "pop909").glob("*.mid")).read_bytes()
    (bad / "corrupted.mid").write_bytes(good[:14] + bytes(range(256)) * 4)
    (bad / "millions_of_notes.mid").write_bytes(_many_notes(2_000_000))
    faults = {}
    for kind, pitch in (("hang", 61), ("abort", 62)):
        path = bad / f"{kind}.mid"
        path.write_bytes(_many_notes(16, pitch))
        faults[piece_id(path.read_bytes())] = kind
    log.info("corpus: %d good variants + 5 bad files in %s", written, out)
    return faults


def _many_notes(n: int, pitch: int = 60) -> bytes:
    score = symusic.Score(480)
    track = symusic.Track("piano")
    track.notes.extend(symusic.Note(i * 60, 60, pitch + i % 12, 80) for i in range(n))
    score.tracks.append(track)
    return score.dumps_midi()


def make_project(dst: Path, corpus: Path) -> Path:
    """The repo's tracked files in a fresh git + DVC project, reading `corpus` as one folder
    source; generator training cut to one epoch."""
    copy_project(dst)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["data"]["sources"] = [
        {"kind": "folder", "name": "synth", "path": str(corpus), "composer_from": "subfolder"}
    ]
    params["organize"]["timeout_s"] = params["tokenize"]["timeout_s"] = 20
    params["generator"]["train"]["epochs"] = 1
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=dst, check=True)
    subprocess.run(["git", "commit", "-qm", "bench"], cwd=dst, check=True)
    return dst


def timed(cwd: Path, env: dict, *cmd: str) -> tuple[float, float, float, list[float]]:
    """Wall seconds, peak RSS and peak PSS (MB, process tree) of one command, and the peak PSS
    of the benchmark's own process, of the command (`dvc`) and of what it runs (the stage and
    its workers); fails loudly."""
    with PeakRSS(pss=True) as rss:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return round(wall, 2), rss.peak_mb, rss.peak_pss_mb, rss.peak_pss_by_depth_mb


def du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def count_files(path: Path) -> int:
    return sum(1 for f in path.rglob("*") if f.is_file())


def measure(work: Path, corpus: Path, faults: dict[str, str]) -> dict:
    repo = make_project(work / "repo", corpus)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),  # the copy's code, as its own install would give
        FAULT_ENV: ",".join(f"{md5}:{kind}" for md5, kind in faults.items()),
    }
    files = count_files(corpus)
    out: dict = {"files": files, "corpus_mb": du_mb(corpus)}
    for stage in ("organize", "tokenize", "bucket_composers", "train_generator"):
        wall, rss, pss, (bench, dvc, own) = timed(repo, env, "dvc", "repro", "-s", stage)
        out[f"{stage}_s"], out[f"{stage}_peak_rss_mb"], out[f"{stage}_peak_pss_mb"] = wall, rss, pss
        out[f"{stage}_peak_pss_bench_mb"] = bench  # this script, holding nothing of the stage
        out[f"{stage}_peak_pss_dvc_mb"] = dvc  # `dvc repro` itself (hashing, lock, state)
        out[f"{stage}_peak_pss_stage_mb"] = own  # the stage's process and its workers
    out["organize_tokenize_s"] = round(out["organize_s"] + out["tokenize_s"], 1)
    out["files_per_s"] = round(files / out["organize_tokenize_s"], 1)
    out["noop_repro_s"] = timed(repo, env, "dvc", "repro", "train_generator")[0]
    out["status_s"] = timed(repo, env, "dvc", "status")[0]
    out["cache_mb"] = du_mb(repo / ".dvc" / "cache")
    out["cache_files"] = count_files(repo / ".dvc" / "cache")
    out["data_files"] = count_files(repo / "data")
    for name in ("organize", "tokenize"):
        out[f"metrics_{name}"] = json.loads((repo / "metrics" / f"{name}.json").read_text())
    for name, path in (
        ("organize", "data/organize_rejects.parquet"),
        ("tokenize", "data/tokens/rejects.parquet"),
    ):
        rows = pq.read_table(repo / path).to_pylist() if (repo / path).is_file() else []
        out[f"{name}_rejects"] = [{k: v for k, v in r.items() if k != "music"} for r in rows[:20]]
    scale = GIGAMIDI_V2 / files
    out["projected_2_1M_organize_tokenize_h"] = round(out["organize_tokenize_s"] * scale / 3600, 1)
    out["projected_2_1M_cache_gb"] = round(out["cache_mb"] * scale / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workdir", type=Path, default=None, help="kept; default: a temporary one")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = external_data()
    if not (data / "pop909").is_dir():
        sys.exit(f"no seed corpora in {data} (set MIDIPIPE_EXTERNAL_DATA)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-corpus-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "corpus_scale", "cpu_count": os.cpu_count()}
    try:
        for size in sorted(args.sizes):
            corpus = work / f"corpus_{size}"
            t0 = time.perf_counter()
            faults = build_corpus(corpus, size, data, os.cpu_count() or 1)
            result[f"build_{size}_s"] = round(time.perf_counter() - t0, 1)
            result[str(size)] = measure(work / f"run_{size}", corpus, faults)
            shutil.rmtree(work / f"run_{size}" / "repo" / ".dvc" / "cache", ignore_errors=True)
            log.info("%d files: %s", size, json.dumps(result[str(size)]))
        small, large = (result[str(s)] for s in (min(args.sizes), max(args.sizes)))
        for key in ("organize", "tokenize", "train_generator"):
            for kind in ("rss", "pss", "pss_dvc", "pss_stage"):
                result[f"{key}_{kind}_ratio_large_over_small"] = round(
                    large[f"{key}_peak_{kind}_mb"] / small[f"{key}_peak_{kind}_mb"], 2
                )
        result["files_per_s_ratio_large_over_small"] = round(
            large["files_per_s"] / small["files_per_s"], 2
        )
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
