"""`midipipe demo`: the page's pieces (analysis, bad input, audio renderers, generation) and
the page itself in headless Chromium over tiny models trained here through the library."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest
import symusic

from midipipe.cli import build_parser
from midipipe.core.errors import ParamError
from midipipe.core.io import write_rows
from midipipe.core.params import Params, TrainParams, build, merged_train
from midipipe.data import composers
from midipipe.data.organize import MANIFEST_SCHEMA
from midipipe.demo import DemoParams, audio, load_params
from midipipe.demo.analyse import Analyser, quadrant
from midipipe.demo.compose import Composer
from midipipe.demo.examples import write_examples
from midipipe.generator import train as gen_train
from midipipe.generator.sampling import SampleConfig
from midipipe.genre.params import GenreParams
from midipipe.genre.phrase_train import train_phrase
from midipipe.tokens.remi import encode, make_tokenizer
from midipipe.tokens.shards import TOKENS_SCHEMA
from tests.conftest import build_midi

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "outputs" / "demo"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# two composers whose styles differ plainly: the phrase model reads `composer`
STYLES = {
    "alpha": dict(pitch=48, program=0, tempo=90.0),
    "beta": dict(pitch=76, program=40, numerator=3, tempo=150.0),
}
GENERATOR = {
    "context": 64,
    "max_windows": 8,
    "eval_windows": 4,
    "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "d_ff": 64, "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "precision": "fp32"},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def build_models(root: Path) -> Path:
    """models/genre_phrase and models/generator trained in seconds on 16 hand-built songs
    of two composers; no hierarchical model and no emotion model (the rule estimate)."""
    tokenizer = make_tokenizer()
    tokens_dir = root / "data" / "tokens"
    tokens_dir.mkdir(parents=True)
    (root / "data" / "midi").mkdir()
    tokenizer.save(tokens_dir)
    manifest, tokens = [], []
    for name, kw in STYLES.items():
        for k in range(8):
            pid, data = f"{name}{k:02d}", build_midi(n_bars=12, **kw)
            (root / "data" / "midi" / f"{pid}.mid").write_bytes(data)
            ids, bars = encode(tokenizer, symusic.Score.from_midi(data))
            tokens.append({"piece_id": pid, "ids": ids.tolist(), "bar_starts": bars.tolist()})
            split = "test" if k == 0 else "valid" if k == 1 else "train"
            manifest.append(
                {"piece_id": pid, "split": split, "composer": name, "period": name, "path": f"{pid}.mid"}
            )
    write_rows(tokens_dir / "part-00000.parquet", tokens, TOKENS_SCHEMA)
    write_rows(root / "data" / "manifest.parquet", manifest, MANIFEST_SCHEMA)
    table = composers.bucket([r["composer"] for r in manifest], min_pieces=2)
    (root / "data" / "composers.json").write_text(__import__("json").dumps(table))
    out = root / "models"
    train_phrase(
        GenreParams(
            label="composer",
            min_class_pieces=2,
            patience=2,
            max_phrases_per_piece=2,
            model={"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64},
        ),
        TrainParams(lr=5e-3, batch_size=8, epochs=3, device="cpu", precision="fp32"),
        tokens_dir,
        root / "data" / "manifest.parquet",
        out / "genre_phrase",
        root / "ckpt_phrase",
        root / "data" / "midi",
        root / "no_latents",
    )
    p = build(gen_train.GeneratorParams, GENERATOR, "generator")
    gen_train.train(
        p,
        merged_train(Params(), p.train),
        tokens_dir,
        root / "data" / "manifest.parquet",
        root / "data" / "composers.json",
        out / "generator",
        root / "ckpt_generator",
    )
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return build_models(tmp_path_factory.mktemp("demo_project"))
