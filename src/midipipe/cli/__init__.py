"""`midipipe` command line: the library's entry points for people, outside the DAG."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
from importlib import metadata
from pathlib import Path

import yaml

from midipipe.cli.configs import add_configs_parser
from midipipe.cli.generate import add_generate_parser
from midipipe.core import params as P
from midipipe.core.io import atomic_path
from midipipe.core.logs import USER_ERRORS, setup_logging
from midipipe.data.midi import piece_id
from midipipe.data.sources.base import MIDI_SUFFIXES, find_midis

log = logging.getLogger("midipipe")

PACKAGES = (
    "midipipe",
    "torch",
    "miditok",
    "symusic",
    "music21",
    "pyarrow",
    "dvc",
    "vector-quantize-pytorch",
    "safetensors",
    "datasets",
)


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(find_midis(path))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def cmd_tokenize(args) -> None:
    from midipipe.tokens.tokenize import tokenize_files

    p = P.load(args.params).tokenize if Path(args.params).exists() else P.TokenizeParams()
    if args.workers is not None:
        p = dataclasses.replace(p, workers=args.workers)
    files = _expand(args.paths)
    items = [(piece_id(f.read_bytes()), str(f)) for f in files]
    summary = tokenize_files(items, args.out, p, total=len(items))
    print(json.dumps(summary.metrics()))


def cmd_export(args) -> None:
    from midipipe.data.export import export

    n = export(args.data, args.out, args.by)
    print(json.dumps({"exported": n, "out": str(args.out), "by": args.by}))


def cmd_info(args) -> None:
    from midipipe.data.sources import describe

    print("versions:")
    print(f"  python: {platform.python_version()}")
    for name in PACKAGES:
        try:
            print(f"  {name}: {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"  {name}: not installed")
    params = P.load(args.params)
    print("sources (params.yaml data.sources):")
    for spec in params.data.sources:
        print(f"  - {describe(spec)}")
    dvc_yaml = Path(args.params).with_name("dvc.yaml")
    if dvc_yaml.exists():
        print("the DAG would produce (dvc.yaml):")
        stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
        for name, stage in stages.items():
            outs = [
                next(iter(o)) if isinstance(o, dict) else o
                for key in ("outs", "metrics", "plots")
                for o in stage.get(key, [])
            ]
            marks = ", ".join(f"{o}{'' if Path(o).exists() else ' (missing)'}" for o in outs)
            print(f"  {name}: {marks}")


def cmd_musetok_events(args) -> None:
    from midipipe.musetok.events import MuseTokReject, bar_positions, events_to_ids, midi_to_events

    try:
        events = midi_to_events(Path(args.file))
    except MuseTokReject as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(1)
    out: dict = {"bar_positions": bar_positions(events), "events": events}
    try:
        out["ids"] = events_to_ids(events)
    except MuseTokReject as exc:
        out["ids"], out["ids_error"] = None, str(exc)
    print(json.dumps(out))


def cmd_latents(args) -> None:
    import torch
    from safetensors.torch import save_file

    from midipipe.core.device import inference_mode, resolve_device
    from midipipe.musetok import checkpoint
    from midipipe.musetok.encode import encode_pieces
    from midipipe.musetok.events import encode_midi

    ids, bar_starts = encode_midi(Path(args.file))
    device = resolve_device(args.device)
    model = checkpoint.load(args.checkpoint).to(device).eval()
    with inference_mode(device, args.precision):
        (out,) = list(encode_pieces(model, [(ids, bar_starts)], batch_size=args.batch_size))
    tensors = {
        "codes": torch.from_numpy(out.codes),
        "latents": torch.from_numpy(out.latents),
        "encoder_out": torch.from_numpy(out.encoder_out),
    }
    with atomic_path(args.out) as tmp:
        save_file(
            tensors,
            str(tmp),
            metadata={"source": str(args.file), "bars_truncated": str(out.n_truncated)},
        )
    print(
        json.dumps(
            {"bars": len(out.codes), "bars_truncated": out.n_truncated, "out": str(args.out)}
        )
    )


def cmd_emotion(args) -> None:
    import csv

    from midipipe.emotion import plot_curves, predict_file, predict_quadrants

    rows = predict_file(args.file, args.model_dir, args.musetok_dir, args.device)
    for r in rows:
        print(
            f"bar {r['bar']:4d}  t={r['start_s']:8.2f}s  valence {r['valence']:+.3f}  "
            f"arousal {r['arousal']:+.3f}  ({r['estimator']})"
        )
    quadrants = predict_quadrants(args.file, args.model_dir, args.musetok_dir)
    if quadrants is not None:
        probs = "  ".join(f"{q} {v:.3f}" for q, v in quadrants["probabilities"].items())
        print(f"quadrant  {probs}  ({quadrants['served']})")
    if args.csv:
        with atomic_path(args.csv) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["bar"])
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        plot_curves(rows, args.plot, title=Path(args.file).name)


def cmd_genre(args) -> None:
    from midipipe.genre.predict import predict

    out = predict(
        args.file,
        model=args.model,
        top_k=args.top_k,
        threshold=args.threshold,
        model_dir=args.model_dir,
        device=args.device,
    )
    print(json.dumps(out))
    if "error" in out:
        sys.exit(1)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present) | cpu | cuda | cuda:N; CUDA runs bf16 autocast with TF32 "
        "(default: %(default)s)",
    )


def cmd_demo(args) -> None:
    from midipipe.demo import load_params
    from midipipe.demo.app import serve  # gradio and torch: only when it runs

    page = serve(args.models, load_params(args.params), args.host, args.port, block=False)
    print(f"midipipe demo: serving http://{args.host}:{args.port} (Ctrl-C stops it)")
    page.block_thread()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midipipe", description=__doc__)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenize", help="tokenize MIDI files or folders into token shards")
    tok.add_argument("paths", nargs="+", help=f"MIDI files or folders ({', '.join(MIDI_SUFFIXES)})")
    tok.add_argument(
        "--out", required=True, help="output folder (remi/, musetok/, rejects.parquet)"
    )
    tok.add_argument("--workers", type=int, default=None, help="processes (default: params)")
    tok.set_defaults(func=cmd_tokenize)

    exp = sub.add_parser("export", help="the corpus store as MIDI files in DIR/<group>/<title>.mid")
    exp.add_argument("out", metavar="DIR", help="output folder")
    exp.add_argument(
        "--by", choices=("composer", "source", "split"), default="composer", help="subfolders"
    )
    exp.add_argument(
        "--data", default="data", help="folder with corpus/ and manifest.parquet (%(default)s)"
    )
    exp.set_defaults(func=cmd_export)

    ev = sub.add_parser("musetok-events", help="MuseTok events of one MIDI file, as JSON")
    ev.add_argument("file")
    ev.set_defaults(func=cmd_musetok_events)

    lat = sub.add_parser("latents", help="per-bar MuseTok codes, latents and encoder output")
    lat.add_argument("file")
    lat.add_argument(
        "--checkpoint",
        required=True,
        help="folder with config.json + model.safetensors, or an official model.pt",
    )
    lat.add_argument("--out", required=True, help="output .safetensors")
    lat.add_argument("--batch-size", type=int, default=256, help="bars per forward pass")
    add_device_argument(lat)
    lat.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 on CPU (default: %(default)s)",
    )
    lat.set_defaults(func=cmd_latents)

    emo = sub.add_parser("emotion", help="per-bar valence and arousal of one MIDI file")
    emo.add_argument("file")
    emo.add_argument("--csv", help="also write the rows as CSV")
    emo.add_argument("--plot", help="draw the curves to this PNG")
    emo.add_argument("--model-dir", default="models/emotion")
    emo.add_argument("--musetok-dir", default="models/musetok")
    add_device_argument(emo)
    emo.set_defaults(func=cmd_emotion)

    add_generate_parser(sub)

    gen = sub.add_parser("genre", help="genre probabilities of one MIDI file, as JSON")
    gen.add_argument("file")
    gen.add_argument("--model", choices=["phrase", "hier"], default="phrase")
    gen.add_argument("--top-k", type=int, default=3)
    gen.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="list genres with probability >= this "
        "(default: tuned on valid for hier, 0.5 for phrase)",
    )
    gen.add_argument(
        "--model-dir",
        default=None,
        help="model folder (default: models/genre_phrase or models/genre_hier)",
    )
    add_device_argument(gen)
    gen.set_defaults(func=cmd_genre)

    add_configs_parser(sub)

    demo = sub.add_parser("demo", help="a local web page: classify, chart and generate")
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s)"
    )
    demo.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    demo.add_argument(
        "--models", default="models", help="the DAG's model folder (default: %(default)s)"
    )
    demo.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="versions, configured sources and the DAG's outputs")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        args.func(args)
    except (*USER_ERRORS, ValueError) as exc:  # bad input or checkpoint: the reason, no trace
        if args.verbose:
            raise
        print(f"midipipe: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
