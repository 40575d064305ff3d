"""Genre models: prediction latency for one ~3-minute song on CPU, and training phrases/s.

Latency is `Predictor.predict` end to end (parse, REMI, phrases or chunks, forward) once the
model folder is loaded, with the torch threads the predictor picks for the model's size
(`--predict-threads N` forces N), median of `--repeats` after a warm-up; target <= 0.5 s.
The song is the POP909 file whose length is nearest 180 s. Without `--phrase-dir` /
`--hier-dir`, model folders are built with random weights (latency does not depend on them):
the phrase encoder at `--size`, the hierarchical head over a cpu_default generator. Training
throughput runs the stage-05 step (length-bucketed batches, transposition, class-weighted
loss, AdamW) on phrases of POP909 songs.

Prints one JSON line.
    python benchmarks/bench_genre.py [--size cpu_default|gpu_profile] [--predict-threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import symusic
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import external_data  # noqa: E402

from midipipe.core.params import TrainParams  # noqa: E402
from midipipe.data.midi import load_score  # noqa: E402
from midipipe.generator.gpt import GPT, GPTConfig, save_model  # noqa: E402
from midipipe.genre.encoder import Encoder, EncoderConfig, save_encoder  # noqa: E402
from midipipe.genre.hier_model import HierClassifier, HierConfig, save_hier, weights_sha256
from midipipe.genre.phrase_train import PhraseSet, class_weights, phrase_batches  # noqa: E402
from midipipe.genre.phrases import Vocab, phrases  # noqa: E402
from midipipe.genre.predict import load_predictor  # noqa: E402
from midipipe.tokens import remi  # noqa: E402
from midipipe.training.fit import make_optimizer  # noqa: E402

CLASSES = ["classical", "folk", "game", "pop"]


def three_minute_song(root: Path, target_s: float = 180.0, scan: int = 80) -> tuple[Path, float]:
    files = sorted(root.glob("[0-9]*/[0-9]*.mid"))[:scan]
    if not files:
        raise SystemExit(f"no POP909 files under {root}: set MIDIPIPE_EXTERNAL_DATA")
    lengths = [(abs(symusic.Score(str(f)).to("second").end() - target_s), f) for f in files]
    _, best = min(lengths)
    return best, float(symusic.Score(str(best)).to("second").end())


def random_folders(tmp: Path, tokenizer, size: str) -> tuple[Path, Path]:
    """A phrase and a hierarchical model folder with random weights."""
    vocab = Vocab.of(tokenizer)
    common = {"vocab_size": vocab.size, "vocab_sha": vocab.sha}
    torch.manual_seed(0)
    enc = Encoder(
        getattr(EncoderConfig, size)(
            vocab_size=vocab.size, n_classes=len(CLASSES), pad_id=vocab.pad_id
        )
    ).eval()
    save_encoder(
        enc,
        tmp / "phrase",
        {
            "kind": "phrase",
            "label": "genre",
            "classes": CLASSES,
            "bars_per_phrase": 4,
            "max_len": 512,
            **common,
        },
    )
    lm = GPT(GPTConfig.cpu_default(vocab_size=vocab.size, pad_id=vocab.pad_id))
    save_model(lm, tmp / "lm")
    head = HierClassifier(HierConfig(d_in=lm.config.d_model, n_labels=len(CLASSES)))
    save_hier(
        head,
        tmp / "hier",
        {
            "kind": "hier",
            "tags": CLASSES,
            "threshold": 0.5,
            "bars_per_chunk": 8,
            "max_chunks": 8,
            "max_tokens": lm.config.context,
            **common,
            "lm": {
                "path": str(tmp / "lm"),
                "kind": "generator",
                "sha256": weights_sha256(tmp / "lm"),
            },
        },
    )
    for name in ("phrase", "hier"):
        tokenizer.save(tmp / name)
    return tmp / "phrase", tmp / "hier"


def latency(folder: Path, kind: str, song: Path, repeats: int, threads: int = 0) -> dict:
    t0 = time.perf_counter()
    predictor = load_predictor(kind, folder)
    load_s = time.perf_counter() - t0
    if threads:
        predictor.threads = threads
    first = predictor.predict(song)
    assert "error" not in first, first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict(song)
        times.append(time.perf_counter() - t0)
    units = first.get("n_phrases", first.get("n_chunks"))
    return {
        f"{kind}_latency_s": round(statistics.median(times), 4),
        f"{kind}_latency_max_s": round(max(times), 4),
        f"{kind}_load_s": round(load_s, 3),
        f"{kind}_threads": predictor.threads,
        f"{kind}_units": units,
        f"{kind}_bars": first["n_bars"],
        f"{kind}_pass_latency": statistics.median(times) <= 0.5,
    }


def throughput(root: Path, tokenizer, size: str, n_songs: int, steps: int, batch_size: int) -> dict:
    vocab = Vocab.of(tokenizer)
    s = PhraseSet()
    for k, f in enumerate(sorted(root.glob("[0-9]*/[0-9]*.mid"))[:n_songs]):
        ids, bars = remi.encode(tokenizer, load_score(f))
        cut = phrases(ids, bars, vocab, 4, 512, 8)
        s.seqs.extend(cut.seqs)
        s.labels.extend([k % len(CLASSES)] * len(cut.seqs))
    torch.manual_seed(0)
    model = Encoder(
        getattr(EncoderConfig, size)(
            vocab_size=vocab.size, n_classes=len(CLASSES), pad_id=vocab.pad_id
        )
    ).train()
    opt = make_optimizer(model, TrainParams())
    weights = class_weights(s.labels, len(CLASSES))
    rng = torch.Generator().manual_seed(0)
    done = tokens = 0
    t0 = time.perf_counter()
    for i, (ids, y) in enumerate(phrase_batches(s, vocab, batch_size, 6, rng)):
        if i == 1:  # the first step pays one-off costs
            t0, done, tokens = time.perf_counter(), 0, 0
        loss = F.cross_entropy(model(ids), y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done += len(y)
        tokens += int((ids != vocab.pad_id).sum())
        if i >= steps:
            break
    dt = time.perf_counter() - t0
    return {
        "train_size": size,
        "train_params": model.n_params(),
        "train_phrases": len(s.seqs),
        "train_mean_phrase_tokens": round(float(np.mean([len(x) for x in s.seqs])), 1),
        "train_batch_size": batch_size,
        "train_steps": steps,
        "train_phrases_per_s": round(done / dt, 1),
        "train_tokens_per_s": round(tokens / dt),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="cpu_default", choices=["cpu_default", "gpu_profile"])
    ap.add_argument("--phrase-dir", default=None, help="a trained models/genre_phrase")
    ap.add_argument("--hier-dir", default=None, help="a trained models/genre_hier")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--predict-threads",
        type=int,
        default=0,
        help="threads while predicting (0: what the predictor picks for the model's size)",
    )
    ap.add_argument("--train-songs", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = external_data() / "pop909"
    song, seconds = three_minute_song(root)
    tokenizer = remi.make_tokenizer()
    out = {
        "bench": "genre",
        "song": song.name,
        "song_s": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        phrase_dir, hier_dir = random_folders(Path(tmp), tokenizer, args.size)
        out["weights"] = "trained" if args.phrase_dir else f"random ({args.size})"
        for kind, folder in (
            ("phrase", args.phrase_dir or phrase_dir),
            ("hier", args.hier_dir or hier_dir),
        ):
            out.update(latency(Path(folder), kind, song, args.repeats, args.predict_threads))
    out.update(
        throughput(root, tokenizer, args.size, args.train_songs, args.train_steps, args.batch_size)
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
