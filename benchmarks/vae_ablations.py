"""Ablations of the label-conditioned VAE (issues 7, 15): LayerNorm, KL weight, free bits, and
the label (dropout for guidance, added at every decoder position).

Each variant is the `vae:` section of params.yaml with a few keys changed; it is trained
and sampled like stages 12 and 13, and every variant is judged by the same composer judge
(`evaluation.judge`, built once), so conditioning accuracies compare like with like. Needs
the project's data/tokens/remi, data/manifest.parquet and data/composers.json (run
`dvc repro tokenize bucket_composers` first). Prints one JSON line.

    python benchmarks/vae_ablations.py                      # all variants
    python benchmarks/vae_ablations.py --variants ln_off ln_on
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from common import ROOT

from midipipe.core import params
from midipipe.core.logs import setup_logging
from midipipe.vae.sample import GenerateVAEParams, evaluate_vae
from midipipe.vae.train import PROFILES, VAEParams, train

ON = {"layer_norm": True}
VARIANTS = {  # changes to params.yaml's `vae:` (whose default has LayerNorm off)
    "ln_off": {"model": {"layer_norm": False}},
    "ln_on": {"model": ON},
    "ln_on_kl_0.2": {"model": ON, "kl_weight": 0.2},
    "ln_on_free_bits_0": {"model": ON, "free_bits": 0.0},
    "ln_on_free_bits_0.5": {"model": ON, "free_bits": 0.5},
    "ln_on_prior_spread_0.1": {"model": {**ON, "prior_spread": 0.1}},
    "label_plain": {"label_dropout": 0.0, "model": {"label_add": False}},  # before issue 15
}
KEEP = (
    "cond_acc",
    "cond_acc_p",
    "relative_cosine",
    "silhouette",
    "tokens_mean",
    "repairs_per_piece",
    "vae_oa_mean",
)


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--project", type=Path, default=ROOT, help="folder with params.yaml, data/")
    args = ap.parse_args()
    setup_logging(logging.WARNING)
    project = args.project
    raw = params.with_profile(  # null keys: the active profile's
        params.section(project / "params.yaml", "vae"),
        PROFILES[params.profile(project / "params.yaml")],
        "vae",
    )
    gp = params.build(
        GenerateVAEParams, params.section(project / "params.yaml", "generate_vae"), "generate_vae"
    )
    shared = params.load(project / "params.yaml")
    data = project / "data"
    results, judge, head = {}, None, {}
    with tempfile.TemporaryDirectory(prefix="vae-ablation-") as tmp:
        for name in args.variants:
            p = params.build(VAEParams, merged(raw, VARIANTS[name]), "vae")
            tp = params.merged_train(shared, p.train)
            run = Path(tmp) / name
            t0 = time.perf_counter()
            _, fit_metrics = train(
                p,
                tp,
                data / "tokens" / "remi",
                data / "manifest.parquet",
                data / "composers.json",
                run / "model",
                run / "resume",
            )
            metrics, judge = evaluate_vae(
                gp,
                run / "model",
                data / "tokens" / "remi",
                data / "manifest.parquet",
                run / "outputs",
                None,
                None,
                project / "models" / "genre_phrase",
                judge,
            )
            head = {k: metrics.get(k) for k in ("chance", "judge", "judge_real_acc", "judge_ratio")}
            results[name] = {
                "changes": VARIANTS[name],
                **{k: metrics.get(k) for k in KEEP},
                "valid_recon_ce": fit_metrics["best_valid_recon_ce"],
                "valid_kl": fit_metrics["best_valid_kl"],
                "active_units": fit_metrics["best_valid_active_units"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            logging.getLogger("vae_ablations").warning("%s: %s", name, results[name])
    scored = {k: v["cond_acc"] for k, v in results.items() if v["cond_acc"] is not None}
    print(
        json.dumps(
            {
                **head,
                "pieces_per_composer": gp.pieces_per_composer,
                "best_cond_acc": max(scored, key=scored.get) if scored else None,
                "variants": results,
            }
        )
    )


if __name__ == "__main__":
    main()
