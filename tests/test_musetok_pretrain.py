"""MuseTok pre-training (`make pretrain-musetok`) and `musetok.init_from`, on tiny fixtures."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import build_midi

from midipipe.core.errors import ParamError
from midipipe.core.params import TokenizeParams, TrainParams
from midipipe.musetok import checkpoint
from midipipe.musetok.model import MuseTok, MuseTokConfig
from midipipe.musetok.pretrain import PretrainParams, pretrain_musetok, resolved_sources
from midipipe.musetok.train import MuseTokTrainParams, model_config, train_musetok


def _tiny(**kw) -> MuseTokConfig:
    sizes = dict(enc_n_layer=1, enc_n_head=2, enc_d_model=16, enc_d_ff=32, dec_n_layer=1)
    sizes |= dict(dec_n_head=2, dec_d_model=16, dec_d_ff=32, d_latent=8, d_embed=16)
    sizes |= dict(num_quantizers=2, codebook_size=8, max_pos=2048)
    sizes |= kw
    return MuseTokConfig(**sizes)


def test_init_from_loads_matching_weights(tmp_path):
    torch.manual_seed(0)
    model = MuseTok(_tiny())
    checkpoint.save(model, tmp_path / "pre")
    got = checkpoint.load_matching(tmp_path / "pre", _tiny(), "musetok.init_from")
    for key, value in model.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key


def test_init_from_refuses_a_missing_folder_or_another_architecture(tmp_path):
    with pytest.raises(ParamError, match=r"musetok\.init_from: .*holds no model\.safetensors"):
        checkpoint.load_matching(tmp_path / "nowhere", _tiny(), "musetok.init_from")
    checkpoint.save(MuseTok(_tiny()), tmp_path / "pre")
    with pytest.raises(ParamError, match=r"another architecture: codebook_size 8 \(here 16\)"):
        checkpoint.load_matching(tmp_path / "pre", _tiny(codebook_size=16), "musetok.init_from")
    # a torch pickle is never read as init_from weights, even under the expected name
    (tmp_path / "pt").mkdir()
    torch.save(MuseTok(_tiny()).state_dict(), tmp_path / "pt" / "model.pt")
    with pytest.raises(ParamError, match="holds no model.safetensors"):
        checkpoint.load_matching(tmp_path / "pt", _tiny(), "musetok.init_from")


def test_params_refuse_checkpoint_with_init_from_and_unknown_train_only():
    with pytest.raises(ParamError, match="musetok.init_from"):
        MuseTokTrainParams(checkpoint="a", init_from="b")
    with pytest.raises(ParamError, match="pretrain_musetok.train_only"):
        PretrainParams(sources=[{"kind": "vgmidi", "name": "vgmidi", "path": "x"}])
    p = PretrainParams(
        data_root="/data", sources=[{"kind": "emopia", "name": "emopia", "path": "e"}]
    )
    assert resolved_sources(p)[0]["path"] == "/data/e"


def _emopia(root: Path) -> None:
    """Four songs: two official train, one val, one test (each two clips)."""
    split_of = {"aa": "train", "bb": "train", "cc": "val", "dd": "test"}
    for i, (song, split) in enumerate(split_of.items()):
        names = [f"Q{1 + i}_{song}_{k}.mid" for k in range(2)]
        for k, name in enumerate(names):
            path = root / "midis" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(build_midi(n_bars=6, pitch=50 + 3 * i + k))
        (root / "split").mkdir(exist_ok=True)
        with (root / "split" / f"{split}_clip.csv").open("a", newline="") as f:
            csv.writer(f).writerows([["clip_name"]] * (f.tell() == 0) + [[n] for n in names])


def test_pretrain_never_sees_held_out_clips_and_writes_a_loadable_model(tmp_path, one_thread):
    _emopia(tmp_path / "emopia")
    for k in range(6):
        path = tmp_path / "folk" / f"tune{k}.mid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build_midi(n_bars=5, pitch=40 + k, numerator=3))
    sources = [
        {"kind": "emopia", "name": "emopia", "path": "emopia"},
        {"kind": "folder", "name": "folk", "path": "folk", "composer_from": "none"},
    ]
    p = PretrainParams(
        sources=sources,
        data_root=str(tmp_path),
        budget_s=0,
        max_epochs=1,
        valid_frac=0.3,
        workers=1,
        work=str(tmp_path / "work"),
        out=str(tmp_path / "out"),
    )
    mp = MuseTokTrainParams(dec_seqlen=64, max_bars=2, augment=False)
    tp = TrainParams(batch_size=4, epochs=1, device="cpu")
    report = pretrain_musetok(p, mp, tp, TokenizeParams(workers=1))

    table = pq.read_table(tmp_path / "work" / "data" / "pretrain_manifest.parquet").to_pylist()
    emopia = {r["original"] for r in table if r["source"] == "emopia"}
    assert emopia and all(("_aa_" in n or "_bb_" in n) for n in emopia)  # val/test clips: out
    assert {r["split"] for r in table} <= {"train", "valid"}
    assert report["corpus"]["pieces"] == len(table) == report["corpus"]["source_emopia"] + 6
    assert 0 <= report["valid_token_acc"] <= 1 and report["valid_perplexity"] > 1
    saved = json.loads((tmp_path / "out" / "pretrain.json").read_text())
    assert saved["epochs_run"] == saved["epochs_planned"] == 1
    # the pretrained folder starts a stage 03 run with the same musetok params
    model = checkpoint.load_matching(tmp_path / "out", model_config(mp), "musetok.init_from")
    assert model.config == dataclasses.replace(MuseTokConfig.cpu_default(), dec_seqlen=64)
    work = tmp_path / "work" / "data"
    tuned = train_musetok(
        dataclasses.replace(mp, init_from=str(tmp_path / "out")),
        tp,
        work / "tokens" / "musetok",
        work / "pretrain_manifest.parquet",
        tmp_path / "tuned",
        tmp_path / "resume",
    )
    assert tuned.metrics["source"] == "fine-tuned"
