"""The `midipipe generate` arguments; torch loads only when the command runs."""

from __future__ import annotations

import argparse
import dataclasses
import json

from midipipe.data.composers import ANY
from midipipe.generator import COMPOSERS_FILE, GenerateOptions


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    """`midipipe generate ...`; the parsed args go to `cmd_generate`."""
    d = GenerateOptions(composer="")
    g = subparsers.add_parser(
        "generate", help="sample a piece from the composer-conditioned GPT or the VAE"
    )
    g.add_argument(
        "--model",
        choices=("gpt", "vae"),
        default="gpt",
        help="gpt (models/generator) or vae (models/vae: guidance, temperature, top-p, "
        "max-tokens, seed and device apply; the other options are the GPT's)",
    )
    g.add_argument(
        "--composer",
        required=True,
        help=f"composer name from <model-dir>/{COMPOSERS_FILE}, or '{ANY}'",
    )
    g.add_argument("-o", "--out", default=d.out, help="output MIDI (default: %(default)s)")
    for flag, kind, help_ in (
        ("--guidance", float, "classifier-free guidance, >= 1 (1 = none)"),
        ("--temperature", float, "softmax temperature"),
        ("--top-k", int, "keep the k most likely tokens (0 = off)"),
        ("--top-p", float, "nucleus mass (1 = off)"),
        ("--repetition-penalty", float, "on recent pitches, >= 1 (1 = off)"),
        ("--seed-length", int, "primer tokens (0 = no primer)"),
        ("--max-bars", int, "bars at most, primer included (0 = no limit)"),
        ("--seed", int, "random seed (sampling and primer choice)"),
        ("--chord-prior", float, "weight of the training chords' prior (0 = off)"),
    ):
        dest = flag[2:].replace("-", "_")
        g.add_argument(
            flag, type=kind, default=getattr(d, dest), help=f"{help_} (default: %(default)s)"
        )
    g.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"new tokens at most (default: {d.max_tokens}; the VAE: its window)",
    )
    g.add_argument(
        "--model-dir",
        default=None,
        help=f"trained model folder (default: {d.model_dir}, models/vae)",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (default: the model folder's, else data/tokens/remi's)",
    )
    g.add_argument(
        "--primer",
        default=None,
        help="prime with this MIDI file (default: a test-split piece of the composer)",
    )
    g.add_argument("--data-dir", default=d.data_dir, help="where held-out primers come from")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    g.add_argument("--interactive", action="store_true", help="sample take after take")
    g.set_defaults(func=cmd_generate)
    return g


def cmd_generate(args) -> None:
    if args.model == "vae":
        from midipipe.vae.sample import generate_file  # torch: only when it runs

        summary = generate_file(
            args.model_dir or "models/vae",
            args.composer,
            args.out,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            max_tokens=args.max_tokens or 0,
            device=args.device,
            guidance=args.guidance,
        )
        print(json.dumps(summary))
        return
    from midipipe.generator.command import generate_command

    names = {f.name for f in dataclasses.fields(GenerateOptions)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    print(json.dumps(generate_command(GenerateOptions(**given))))
