"""Composer conditioning on a real piano corpus (issue 15): the user's path on ASAP scores
(`data.sources` naming the folder, grouped by work, as in bench_real.py), through the same
library calls as the stages: 02 composer ids, 05 the composer classifier (`genre.label:
composer`, `--genre-budget-s` of training), 08 the GPT and 12 the VAE at the active profile's
CPU budget, 09 and 13 sampling and judging. One JSON line: the judge (which model, its
accuracy on real held-out excerpts, chance, ratio), GPT conditioning accuracy at guidance 1
and 3 and the VAE's, each with its p-value and whether it counts, and the mean music-metric
overlap with the real excerpts.

`--variants` changes the GPT's params from params.yaml's: what the README's table of tried
settings came from. Trained models stay in `--work` and are reused by later runs with the
same changes (delete the folder after changing code or params.yaml).
`--corpus embedded`: the same on params.yaml's own sources and splits, without stage 05
(`genre.label: auto` picks period there, so the judge is fitted on train excerpts).

    python benchmarks/bench_conditioning.py                         # base GPT + VAE
    python benchmarks/bench_conditioning.py --variants base scale_2 primer_64 --no-vae
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real import asap_sources, build, run_asap  # noqa: E402
from common import ROOT, external_data  # noqa: E402

from midipipe.core import params  # noqa: E402
from midipipe.core.io import write_json  # noqa: E402
from midipipe.data import composers  # noqa: E402
from midipipe.evaluation import generated as ev  # noqa: E402
from midipipe.evaluation.judge import make_judge  # noqa: E402
from midipipe.generator import train as gen_train  # noqa: E402
from midipipe.generator.corpus import (  # noqa: E402
    eval_corpus,
    read_table,
    split_pieces,
    train_and_valid,
)
from midipipe.generator.generate import (  # noqa: E402
    GenerateParams,
    evaluate_generator,
    real_excerpts,
)
from midipipe.generator.keys import KEY_MODES, KeyShift  # noqa: E402
from midipipe.generator.order import INTERVALS_FILE  # noqa: E402
from midipipe.tokens import remi  # noqa: E402
from midipipe.tokens.dataset import iter_pieces  # noqa: E402
from midipipe.vae import train as vae_train  # noqa: E402
from midipipe.vae.sample import GenerateVAEParams, evaluate_vae  # noqa: E402

log = logging.getLogger("bench_conditioning")


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


# changes to params.yaml: `generator` (a retrained GPT) and/or `generate` (sampling only)
CHANGES: dict[str, dict] = {
    "primer_64": {"generate": {"seed_length": 64}},
    "temperature_0.8": {"generate": {"temperature": 0.8}},
    "top_p_0.6": {"generate": {"top_p": 0.6}},
    "top_p_0.4": {"generate": {"top_p": 0.4}},
    "context_256": {"generator": {"context": 256}},
    "scale_2": {"generator": {"model": {"composer_scale": 2.0}}},
    "scale_0.25": {"generator": {"model": {"composer_scale": 0.25}}},
    "key_normalise": {"generator": {"key": "normalise"}},
    "key_none": {"generator": {"key": "none"}},
    "composer_token": {"generator": {"model": {"composer_token": True}}},
    "seed_7": {"generator": {"train": {"seed": 7}}},
    "seed_3": {"generator": {"train": {"seed": 3}}},
    "every_layer": {"generator": {"model": {"condition": "every_layer"}}},
    "input": {"generator": {"model": {"condition": "input"}}},  # the default before
    "input_seed_7": {"generator": {"model": {"condition": "input"}, "train": {"seed": 7}}},
    "input_seed_3": {"generator": {"model": {"condition": "input"}, "train": {"seed": 3}}},
    "dropout_0.8": {"generator": {"composer_dropout": 0.8}},
    "dropout_0.3": {"generator": {"composer_dropout": 0.3}},
    "composer_token_seed_7": {
        "generator": {"model": {"composer_token": True}, "train": {"seed": 7}}
    },
}
# the weight of the chord prior (`generate.chord_prior`), sampling only
PRIOR_CHANGES: dict[str, dict] = {
    f"{name}": {"generate": {"chord_prior": w}}
    for name, w in (("no_prior", 0.0), ("prior_0.5", 0.5), ("prior_1", 1.0), ("prior_2", 2.0))
}
KEY = {"generator": {"key": "normalise"}}
EVERY = {"generator": {"model": {"condition": "every_layer"}}}
PITCH = {"generator": {"note_order": "pitch"}}  # chords bottom-up (generator/order.py)
EPOCHS_9 = {"generator": {"train": {"epochs": 9}}}  # the cpu profile before issue 15
VARIANTS: dict[str, dict] = {
    "base": {},
    "epochs_9": EPOCHS_9,
    "epochs_27": {"generator": {"train": {"epochs": 27}}},
    **CHANGES,
    **PRIOR_CHANGES,
    **{
        f"seed_{seed}_{k}": {**v, "generator": {"train": {"seed": seed}}}
        for seed in (7, 3)
        for k, v in PRIOR_CHANGES.items()
    },
    **{
        f"epochs_9_{k}": {**v, "generator": merged(v.get("generator", {}), EPOCHS_9["generator"])}
        for k, v in CHANGES.items()
    },
    **{
        f"key_normalise_{k}": {**v, "generator": merged(v.get("generator", {}), KEY["generator"])}
        for k, v in CHANGES.items()
        if not k.startswith("key_")
    },
    **{
        f"every_layer_{k}": {**v, "generator": merged(v.get("generator", {}), EVERY["generator"])}
        for k, v in CHANGES.items()
        if k not in ("every_layer", "input")
    },
    "pitch_order": PITCH,
    **{
        f"pitch_order_{k}": {**v, "generator": merged(v.get("generator", {}), PITCH["generator"])}
        for k, v in {**CHANGES, **PRIOR_CHANGES}.items()
    },
}
JUDGE_KEYS = ("judge", "judge_composers", "judge_skipped", "chance", "judge_real_acc")
JUDGE_KEYS += ("judge_real_acc_p", "judge_ratio", "judge_counts", "judge_unclassified")


def gpt_params(changes: dict) -> gen_train.GeneratorParams:
    raw = params.with_profile(
        params.section(ROOT / "params.yaml", "generator"),
        gen_train.PROFILES[params.profile(ROOT / "params.yaml")],
        "generator",
    )
    return params.build(gen_train.GeneratorParams, merged(raw, changes), "generator")


def summary(m: dict, prefixes: list[str]) -> dict:
    """The judge and, per conditioning figure, its accuracy, p-value and whether it counts."""
    out = {k: m.get(k) for k in JUDGE_KEYS if k in m}
    for p in prefixes:
        for suffix in ("", "_p", "_counts"):
            out[f"{p}{suffix}"] = m.get(f"{p}{suffix}")
    return out


def run_gpt(root: Path, name: str, pieces: int) -> dict:
    """One variant: the GPT trained for its `generator` changes (reused when a model with
    the same changes is in `root`), sampled and judged like stage 09."""
    change = VARIANTS[name]
    data = root / "data"
    gp_raw = merged(params.section(ROOT / "params.yaml", "generate"), change.get("generate", {}))
    gp = params.build(GenerateParams, {**gp_raw, "pieces_per_composer": pieces}, "generate")
    p = gpt_params(change.get("generator", {}))
    resolved = dataclasses.asdict(p)
    if resolved["note_order"] == "tokenizer":  # folders of models from before the field
        del resolved["note_order"]
    key = json.dumps(resolved, sort_keys=True)  # the resolved params
    model_dir = root / "models" / f"generator_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    out: dict = {"changes": change}
    if not (model_dir / "fit.json").exists():  # written last: else the model is reused
        t0 = time.perf_counter()
        tp = params.merged_train(params.load(ROOT / "params.yaml"), p.train)
        shutil.rmtree(root / "checkpoints" / "generator", ignore_errors=True)  # no resume
        _, fit = gen_train.train(
            p,
            tp,
            data / "tokens" / "remi",
            data / "manifest.parquet",
            data / "composers.json",
            model_dir,
            root / "checkpoints" / "generator",
        )
        write_json(model_dir / "fit.json", {"train_s": round(time.perf_counter() - t0, 1), **fit})
    if not (model_dir / INTERVALS_FILE).exists():  # a model from before the chord prior
        write_json(model_dir / INTERVALS_FILE, {"counts": training_chords(root, p)})
    fit = json.loads((model_dir / "fit.json").read_text())
    out.update(train_s=fit["train_s"], best_valid_loss=fit.get("best_valid_loss"))
    t1 = time.perf_counter()
    m = evaluate_generator(
        gp,
        model_dir,
        data / "tokens" / "remi",
        data / "manifest.parquet",
        root / "outputs" / f"generated_{name}",
        root / "metrics" / f"generation_confusion_{name}.png",
        root / "models" / "genre_phrase",
    )
    write_json(root / "metrics" / f"generation_{name}.json", m)
    tags = [f"g{float(g)!r}_cond_acc" for g in gp.guidance]
    out.update(summary(m, tags))
    out.update({f"g{float(g)!r}_oa_mean": m.get(f"g{float(g)!r}_oa_mean") for g in gp.guidance})
    out["generate_s"] = round(time.perf_counter() - t1, 1)
    return out


def training_chords(root: Path, p: gen_train.GeneratorParams) -> list[list[int]]:
    """What stage 08 stores beside a model for the chord prior, from the same training split."""
    data = root / "data"
    tokenizer = remi.load_tokenizer(data / "tokens" / "remi" / "tokenizer.json")
    table = read_table(data / "composers.json")
    train_set, _, _ = train_and_valid(data / "tokens" / "remi", data / "manifest.parquet", table)
    keys, order = gen_train.trained_transforms(p, tokenizer.vocab)
    return gen_train.training_chords(train_set, keys, order, tokenizer.vocab, table["n_ids"])


def judge_keys(root: Path, tokens: int, per_piece: int, seed: int) -> dict:
    """The stage-09 judge on the real held-out excerpts as they are and transposed to C major
    / A minor like a key-normalised model's pieces: does it still tell composers apart there?"""
    data = root / "data"
    tokens_dir, manifest = data / "tokens" / "remi", data / "manifest.parquet"
    tokenizer = remi.load_tokenizer(tokens_dir / "tokenizer.json")
    table = read_table(data / "composers.json")
    names = [(c["name"], c["id"]) for c in table["composers"]]
    valid = eval_corpus(tokens_dir, manifest, table, "valid")
    real = real_excerpts(
        eval_corpus(tokens_dir, manifest, table, "test").joined(valid), tokens, per_piece
    )
    train = real_excerpts(
        iter_pieces(split_pieces(tokens_dir, manifest, table, "train")), tokens, per_piece
    )
    genre = root / "models" / "genre_phrase"
    judge = make_judge(
        tokenizer,
        names,
        train,
        real_excerpts(valid, tokens, per_piece),
        genre if genre.exists() else None,
        seed,
    )
    ids = sorted({p.composer_id for p in real} & {c for _, c in judge.composers})
    test = [p for p in real if p.composer_id in ids]
    keys = KeyShift(tokenizer.vocab)
    moved = [ev.Piece(keys.normalise(np.asarray(p.ids)).tolist(), p.composer_id) for p in test]
    true = np.array([p.composer_id for p in test])
    out = {"excerpts": len(test), "chance": 1 / len(ids)}
    for name, pieces in (("as_is", test), ("key_normalised", moved)):
        out[name] = round(float((judge.predict(tokenizer, pieces, ids) == true).mean()), 3)
    return out


def run_vae(root: Path, pieces: int, args: argparse.Namespace) -> dict:
    """The VAE of the active profile, `--vae-set` (JSON changes to `vae:`), `--vae-epochs`
    and `--vae-key` applied (reused when trained with the same changes), sampled at
    `--vae-top-p` / `--vae-guidance` and judged like stage 13."""
    data = root / "data"
    p = params.profiled(vae_train.VAEParams, ROOT / "params.yaml", "vae", vae_train.PROFILES)
    changes = json.loads(args.vae_set or "{}")
    if args.vae_epochs:
        changes = merged(changes, {"train": {"epochs": args.vae_epochs}})
    if args.vae_key:
        changes["key"] = args.vae_key
    p = params.build(vae_train.VAEParams, merged(dataclasses.asdict(p), changes), "vae")
    tp = params.merged_train(params.load(ROOT / "params.yaml"), p.train)
    key = json.dumps(dataclasses.asdict(p), sort_keys=True)
    tag = f"vae_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    model_dir = root / "models" / tag
    t0 = time.perf_counter()
    # reused only when its training metrics landed too (written last)
    if not model_dir.with_suffix(".json").exists():
        shutil.rmtree(root / "checkpoints" / "vae", ignore_errors=True)
        _, trained = vae_train.train(
            p,
            tp,
            data / "tokens" / "remi",
            data / "manifest.parquet",
            data / "composers.json",
            model_dir,
            root / "checkpoints" / "vae",
        )
        write_json(model_dir.with_suffix(".json"), trained)
    train_s = round(time.perf_counter() - t0, 1)
    trained = json.loads(model_dir.with_suffix(".json").read_text())
    gp = params.build(
        GenerateVAEParams, params.section(ROOT / "params.yaml", "generate_vae"), "generate_vae"
    )
    gp = dataclasses.replace(
        gp,
        pieces_per_composer=pieces,
        top_p=args.vae_top_p or gp.top_p,
        temperature=args.vae_temperature or gp.temperature,
        guidance=args.vae_guidance or gp.guidance,
        prior_scale=gp.prior_scale if args.vae_prior_scale is None else args.vae_prior_scale,
    )
    sampled = f"{tag}_top_p_{gp.top_p}_t{gp.temperature}_g{gp.guidance}_z{gp.prior_scale}"
    m, _ = evaluate_vae(
        gp,
        model_dir,
        data / "tokens" / "remi",
        data / "manifest.parquet",
        root / "outputs" / "generated_vae",
        root / "metrics" / f"vae_confusion_{sampled}.png",
        root / "metrics" / "vae_latent.png",
        root / "models" / "genre_phrase",
    )
    write_json(root / "metrics" / f"vae_generation_{sampled}.json", m)
    keep = ("vae_oa_mean", "silhouette", "relative_cosine", "relative_cosine_real_test")
    return {
        "changes": changes,
        "top_p": gp.top_p,
        "temperature": gp.temperature,
        "guidance": gp.guidance,
        "prior_scale": gp.prior_scale,
        "steps": trained.get("steps"),
        "train_s": trained["train_s"],
        "valid_recon_ce": trained["best_valid_recon_ce"],
        "active_units": trained["best_valid_active_units"],
        "repairs_per_piece": m["repairs_per_piece"],
        "judged": m.get("composers_evaluated", 0) * pieces,
        **summary(m, ["cond_acc"]),
        **{k: m.get(k) for k in keep},
        "s": round(time.perf_counter() - t0, 1),
        "fit_s": train_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/midipipe-bench-conditioning"))
    ap.add_argument("--corpus", choices=("asap", "embedded"), default="asap")
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["base"])
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--vae-top-p", type=float, help="generate_vae.top_p (default: params.yaml)")
    ap.add_argument("--vae-temperature", type=float, help="generate_vae.temperature")
    ap.add_argument("--vae-epochs", type=int, help="vae epochs (default: the profile's)")
    ap.add_argument("--vae-key", choices=KEY_MODES, help="vae.key (default: params.yaml)")
    ap.add_argument("--vae-set", help="JSON changes to `vae:`, e.g. '{\"label_dropout\": 0.2}'")
    ap.add_argument("--vae-guidance", type=float, help="generate_vae.guidance")
    ap.add_argument("--vae-prior-scale", type=float, help="generate_vae.prior_scale")
    ap.add_argument(
        "--judge-keys", action="store_true", help="the judge on key-normalised real excerpts"
    )
    ap.add_argument("--pieces", type=int, default=10, help="pieces per composer and guidance")
    ap.add_argument("--genre-budget-s", type=float, default=120.0, help="stage 05 training")
    ap.add_argument("--genre-epochs", type=int, default=30)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # shared cores: spare threads only spin
    root = args.work / args.corpus
    t0 = time.perf_counter()
    if args.corpus == "asap":
        sources = asap_sources(external_data(), root, "scores")
        info: dict = build(root, sources, 2, None, test_frac=0.2)
    else:  # params.yaml's own sources and splits
        info = build(root, params.load(ROOT / "params.yaml").data.sources, 2, None)
    table = composers.from_manifest(
        root / "data" / "manifest.parquet", params.load(ROOT / "params.yaml").composers.min_pieces
    )
    write_json(root / "data" / "composers.json", table)
    info["composers"] = ",".join(c["name"] for c in table["composers"])
    if args.corpus == "asap":  # stage 05 on composers: the judge
        if not (root / "models" / "genre_phrase" / "config.json").exists():
            write_json(
                root / "stage05.json", run_asap(root, args.genre_budget_s, args.genre_epochs)
            )
        stage05 = json.loads((root / "stage05.json").read_text())
        keep = ("piece_accuracy", "served", "served_piece_accuracy")
        info["stage05"] = {k: stage05.get(k) for k in keep}
    if args.judge_keys:
        gp = params.build(
            GenerateParams, params.section(ROOT / "params.yaml", "generate"), "generate"
        )
        info["judge_keys"] = judge_keys(root, gp.max_tokens, gp.real_chunks_per_piece, gp.seed)
    info["gpt"] = {name: run_gpt(root, name, args.pieces) for name in args.variants}
    if not args.no_vae:
        info["vae"] = run_vae(root, args.pieces, args)
    info["s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"bench": f"conditioning_{args.corpus}", **info}), flush=True)


if __name__ == "__main__":
    main()
