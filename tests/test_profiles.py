"""`profile:` in params.yaml: cpu resolves to the values the committed metrics were made
with, gpu to the plans' sizes, and one key set in params.yaml wins over either."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from midipipe.cli import main
from midipipe.cli.configs import resolved
from midipipe.core.errors import ParamError

ROOT = Path(__file__).resolve().parents[1]


def params_with(tmp_path: Path, **changes) -> Path:
    """The repository's params.yaml with top-level sections or keys replaced."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[section] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def arch(cfg: dict, *keys: str) -> tuple:
    return tuple(cfg["architecture"][k] for k in keys)


def test_cpu_profile_is_todays_cpu_run():
    r = resolved(str(ROOT / "params.yaml"))
    assert r["profile"] == "cpu"
    g = r["generator"]
    keys = ("n_layer", "n_head", "d_model", "d_ff", "context", "composer_scale", "condition")
    assert arch(g, *keys) == (4, 4, 128, 512, 128, 1.0, "every_layer")
    assert {k: g["budget"][k] for k in ("grad_accum", "max_windows", "eval_windows")} == {
        "grad_accum": 1,
        "max_windows": 640,
        "eval_windows": 64,
    }
    assert (g["train"]["epochs"], g["train"]["batch_size"], g["train"]["lr"]) == (18, 16, 3e-3)
    m = r["musetok"]
    assert m["architecture"] == resolved_musetok_cpu()
    assert (m["budget"]["size"], m["budget"]["max_bars"]) == ("cpu_default", 8)
    t = m["train"]
    assert (t["batch_size"], t["epochs"], t["grad_clip"], t["lr"]) == (16, 6, 0.5, 1e-3)
    e = r["genre"]
    assert arch(e, "n_layer", "n_head", "d_model", "d_ff") == (2, 4, 64, 256)
    assert (e["train"]["epochs"], e["train"]["batch_size"], e["train"]["lr"]) == (8, 32, 1e-3)
    v = r["vae"]
    assert arch(
        v, "window", "d_model", "n_head", "d_ff", "n_enc_layer", "n_dec_layer", "d_latent"
    ) == (256, 128, 4, 256, 2, 2, 32)
    assert v["architecture"]["layer_norm"] is False
    assert (v["budget"]["max_windows"], v["budget"]["eval_windows"]) == (800, 64)
    assert (v["train"]["epochs"], v["train"]["batch_size"], v["train"]["lr"]) == (9, 8, 3e-3)


def resolved_musetok_cpu() -> dict:
    import dataclasses

    from midipipe.musetok.model import MuseTokConfig

    return dataclasses.asdict(dataclasses.replace(MuseTokConfig.cpu_default(), dec_seqlen=256))


def test_gpu_profile_is_the_plan(tmp_path):
    r = resolved(str(params_with(tmp_path, profile="gpu")))
    g = r["generator"]
    assert arch(g, "n_layer", "n_head", "d_model", "d_ff", "context") == (8, 8, 512, 2048, 8192)
    assert (g["train"]["batch_size"], g["budget"]["grad_accum"]) == (2, 8)
    assert g["train"]["warmup_frac"] == 0.05  # then cosine (training.fit's only schedule)
    e = r["genre"]
    assert arch(e, "n_layer", "d_model", "n_head") == (6, 512, 8)
    m = r["musetok"]
    assert arch(m, "enc_n_layer", "dec_n_layer", "enc_d_model", "dec_d_model") == (
        12, 12, 512, 512,
    )  # fmt: skip
    assert arch(m, "num_quantizers", "codebook_size", "dec_seqlen") == (16, 2048, 1280)
    assert m["budget"]["max_bars"] == 16
    assert (m["train"]["lr"], m["train"]["min_lr"], m["train"]["grad_clip"]) == pytest.approx(
        (1e-4, 5e-6, 0.5)
    )
    v = r["vae"]
    assert v["params"] > 10_000_000  # the large VAE
    assert v["architecture"]["window"] >= 500


def test_one_key_overrides_the_profile(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    generator = {**raw["generator"], "context": 256}
    generator["train"] = {**generator["train"], "batch_size": 4}
    path = params_with(tmp_path, profile="gpu", generator=generator)
    g = resolved(str(path))["generator"]
    assert g["architecture"]["context"] == 256 and g["train"]["batch_size"] == 4
    assert g["architecture"]["d_model"] == 512 and g["budget"]["grad_accum"] == 8


def test_unknown_profile_names_the_key(tmp_path):
    with pytest.raises(ParamError, match="profile: must be one of cpu, gpu"):
        resolved(str(params_with(tmp_path, profile="tpu")))


def test_configs_command_prints_json(tmp_path, capsys):
    main(["--params", str(ROOT / "params.yaml"), "configs", "--profile", "gpu", "--compact"])
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "gpu" and out["generator"]["architecture"]["context"] == 8192


def test_stages_that_read_a_profile_depend_on_it():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("train_musetok", "train_genre", "train_generator", "train_vae"):
        assert "profile" in stages[name]["params"], name
