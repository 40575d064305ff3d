"""`midipipe configs`: every trained model's architecture and budget as params.yaml resolves
them under its `profile`, so a user sees what `-S profile=gpu` (or one override) will train."""

from __future__ import annotations

import dataclasses
import json

from midipipe.core import params as P


def _n_params(build) -> int:
    """Parameters of the model `build()` makes, counted on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def _split(section) -> dict:
    """A section's own budget keys: all but the model and train sub-sections."""
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in ("model", "train")}


def resolved(path: str = "params.yaml", which: str | None = None) -> dict:
    """{model: {architecture, budget, train, params}} for the active profile (or `which`).
    Sizes set by the data (vocabulary, classes, composers) keep their config defaults."""
    from midipipe.generator.gpt import GPT, GPTConfig
    from midipipe.generator.train import PROFILES as GPT_PROFILES
    from midipipe.generator.train import GeneratorParams
    from midipipe.genre.encoder import Encoder, EncoderConfig
    from midipipe.genre.params import PROFILES as GENRE_PROFILES
    from midipipe.genre.params import GenreParams
    from midipipe.musetok.model import MuseTok
    from midipipe.musetok.train import PROFILES as MUSETOK_PROFILES
    from midipipe.musetok.train import MuseTokTrainParams, model_config
    from midipipe.vae.model import LabelVAE, VAEConfig
    from midipipe.vae.train import PROFILES as VAE_PROFILES
    from midipipe.vae.train import VAEParams

    name = which or P.profile(path)
    base = P.load(path)
    out: dict = {"profile": name}

    def add(key, section, cfg, model_cls) -> None:
        out[key] = {
            "architecture": dataclasses.asdict(cfg),
            "params": _n_params(lambda: model_cls(cfg)),
            "budget": _split(section),
            "train": dataclasses.asdict(P.merged_train(base, section.train, f"{key}.train")),
        }

    m = P.profiled(MuseTokTrainParams, path, "musetok", MUSETOK_PROFILES, name)
    add("musetok", m, model_config(m), MuseTok)
    g = P.profiled(GenreParams, path, "genre", GENRE_PROFILES, name)
    add("genre", g, EncoderConfig(**{**g.model, "max_len": g.max_len}), Encoder)
    gp = P.profiled(GeneratorParams, path, "generator", GPT_PROFILES, name)
    add("generator", gp, GPTConfig(**{**gp.model, "context": gp.context}), GPT)
    v = P.profiled(VAEParams, path, "vae", VAE_PROFILES, name)
    add("vae", v, VAEConfig(**{**v.model, "window": v.window}), LabelVAE)
    return out


def cmd_configs(args) -> None:
    print(json.dumps(resolved(args.params, args.profile), indent=None if args.compact else 2))


def add_configs_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "configs", help="every model's resolved architecture and training budget, as JSON"
    )
    c.add_argument(
        "--profile", choices=P.PROFILES, default=None, help="this profile, not params.yaml's"
    )
    c.add_argument("--compact", action="store_true", help="one line")
    c.set_defaults(func=cmd_configs)
