"""MuseTok pre-training on a union of corpora (`make pretrain-musetok`, `pretrain_musetok:`).

Stage 03 trains MuseTok on the project's own corpus, often a few hundred pieces. This builds
a separate corpus from `sources` (organize + tokenize under `work`, as stages 00-01 do),
drops every piece of a `train_only` source outside its official train split (EMOPIA's val and
test clips are benchmarks: never seen, not even for validation), and trains MuseTok on the
rest with stage 03's own code for `budget_s` seconds. The weights land in `out` (outside git:
they derive from the corpora), where `musetok.init_from` (fine-tune) or `musetok.checkpoint`
(reuse as is) can name them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from midipipe.core import params
from midipipe.core.errors import ParamError
from midipipe.core.io import write_json, write_table
from midipipe.core.params import DataParams, OrganizeParams, Params, TokenizeParams
from midipipe.data.organize import organize
from midipipe.data.store import Corpus
from midipipe.musetok.train import PROFILES, MuseTokTrainParams, train_musetok
from midipipe.tokens.tokenize import tokenize_files

log = logging.getLogger(__name__)


def _default_sources() -> list[dict]:
    return [
        {"kind": "folder", "name": "pop909", "path": "pop909", "composer_from": "none"},
        {"kind": "folder", "name": "nottingham", "path": "nottingham", "composer_from": "none"},
        {"kind": "vgmidi", "name": "vgmidi", "path": "vgmidi"},
        {"kind": "emopia", "name": "emopia", "path": "emopia"},
    ]


@dataclass
class PretrainParams:
    """`pretrain_musetok:` section of params.yaml; the model itself is `musetok:` (its
    profile's size), trained for `budget_s` seconds."""

    sources: list[dict] = field(default_factory=_default_sources)  # `data.sources` entries
    # where relative source paths start; null: $MIDIPIPE_EXTERNAL_DATA, else ../shared/datasets
    data_root: str | None = None
    train_only: list[str] = field(default_factory=lambda: ["emopia"])  # official train alone
    budget_s: float = 1200.0  # training seconds (epochs that fit, at most max_epochs)
    max_epochs: int = 100
    seed: int = 1234
    valid_frac: float = 0.05  # held-out songs for valid token accuracy / model selection
    workers: int = 0  # organize/tokenize processes (0 = one per core)
    work: str = "outputs/pretrain_musetok"  # the built corpus and resume checkpoints
    out: str = "models/pretrained/musetok"  # config.json + model.safetensors + pretrain.json

    def __post_init__(self) -> None:
        checks = [
            (bool(self.sources), "sources", "a non-empty list of data.sources entries"),
            (self.budget_s >= 0, "budget_s", ">= 0"),
            (self.max_epochs >= 1, "max_epochs", ">= 1"),
            (0 < self.valid_frac < 1, "valid_frac", "in (0, 1)"),
        ]
        params.require(self, "pretrain_musetok", checks)
        names = {s.get("name") for s in self.sources}
        unknown = sorted(set(self.train_only) - names)
        if unknown:
            raise ParamError(f"pretrain_musetok.train_only: {unknown} name no source ({names})")


def resolved_sources(p: PretrainParams) -> list[dict]:
    """`p.sources` with relative paths under `p.data_root` (see its comment)."""
    root = Path(p.data_root or os.environ.get("MIDIPIPE_EXTERNAL_DATA", "../shared/datasets"))
    return [{**s, "path": str(root / s["path"])} if "path" in s else s for s in p.sources]


def build_corpus(p: PretrainParams, tokenize: TokenizeParams) -> tuple[Path, dict]:
    """Organize + tokenize the kept pieces under `p.work` (reused when the sources and split
    are unchanged); returns the kept pieces' manifest and its counts."""
    data = Path(p.work) / "data"
    sources = resolved_sources(p)
    recipe = {"sources": sources, "train_only": p.train_only, "seed": p.seed}
    recipe["valid_frac"] = p.valid_frac
    stamp = data / "recipe.json"
    manifest = data / "pretrain_manifest.parquet"
    if not stamp.exists() or json.loads(stamp.read_text()) != recipe:
        stamp.unlink(missing_ok=True)
        o = OrganizeParams(seed=p.seed, valid_frac=p.valid_frac, test_frac=0.0, workers=p.workers)
        organize(Params(data=DataParams(sources=sources), organize=o), data)
        table = pq.read_table(data / "manifest.parquet")
        held = pc.and_(
            pc.is_in(table["source"], value_set=pc.cast(p.train_only, table["source"].type)),
            pc.not_equal(table["split"], "train"),
        )
        table = table.filter(pc.invert(held))
        # an official test split (none in the others: test_frac 0) trains with the rest
        table = table.set_column(
            table.schema.get_field_index("split"),
            "split",
            pc.if_else(pc.equal(table["split"], "valid"), "valid", "train"),
        )
        write_table(manifest, table)
        corpus = Corpus(data / "corpus", data / "manifest.parquet")
        kept = corpus.in_store_order(table["piece_id"].to_pylist())  # held-out clips: never read
        tokenize_files(
            [(pid, pid) for pid in kept],
            data / "tokens",
            dataclasses.replace(tokenize, workers=p.workers),
            total=len(kept),
            music=lambda todo: corpus.iter_music(pid for pid, _ in todo),
        )
        stamp.write_text(json.dumps(recipe))
    table = pq.read_table(manifest, columns=["source", "split"]).to_pylist()
    counts = {"pieces": len(table)}
    for key in ("source", "split"):
        for value in sorted({r[key] for r in table}):
            counts[f"{key}_{value}"] = sum(r[key] == value for r in table)
    return manifest, counts


def pretrain_musetok(
    p: PretrainParams, mp: MuseTokTrainParams, tp: params.TrainParams, tokenize: TokenizeParams
) -> dict:
    """Build the corpus and train MuseTok `mp` on it for `p.budget_s`; returns the report
    (also written as `pretrain.json` beside the weights)."""
    t0 = time.perf_counter()
    manifest, counts = build_corpus(p, tokenize)
    build_s = time.perf_counter() - t0
    mp = dataclasses.replace(mp, checkpoint=None, init_from=None, budget_s=p.budget_s)
    tp = dataclasses.replace(tp, seed=p.seed, epochs=p.max_epochs)
    work = Path(p.work)
    run = train_musetok(
        mp, tp, work / "data" / "tokens" / "musetok", manifest, p.out, work / "checkpoints"
    )
    m = run.metrics
    report = {
        "corpus": counts,
        "size": mp.size,
        "budget_s": p.budget_s,
        "seed": p.seed,
        "build_s": round(build_s, 1),
        "train_s": round(time.perf_counter() - t0 - build_s, 1),
        "epochs_planned": m["epochs"],
        "epochs_run": m["epochs_run"],
        "best_epoch": m["best_epoch"],
        "valid_loss": round(m["valid_loss"], 4),
        "valid_perplexity": round(math.exp(m["valid_loss"]), 3),
        "valid_token_acc": round(m["valid_token_acc"], 4),
        "code_perplexity_l0": round(m.get("code_perplexity_l0", 0.0), 1),
        "history": run.history,
    }
    write_json(Path(p.out) / "pretrain.json", report)
    return report


def main() -> None:
    """`python -m midipipe.musetok.pretrain [params.yaml]`, what `make pretrain-musetok` runs."""
    import sys

    from midipipe.core.logs import run_main

    def run() -> None:
        path = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
        p = params.build(
            PretrainParams, params.section(path, "pretrain_musetok"), "pretrain_musetok"
        )
        mp = params.profiled(MuseTokTrainParams, path, "musetok", PROFILES)
        tp = params.merged_train(params.load(path), mp.train)
        report = pretrain_musetok(p, mp, tp, params.load(path).tokenize)
        print(json.dumps({k: v for k, v in report.items() if k != "history"}))

    run_main(run)


if __name__ == "__main__":
    main()
