"""The label-conditioned VAE (issue 7): model, training and sampling stages, the conditioning
suite, `vae_sample.generate_file`, and the errors a user can fix."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import symusic
import torch
import yaml

from midipipe.core.errors import ParamError
from midipipe.core.params import Params, build, merged_train
from midipipe.core.reports import write_curves, write_metrics
from midipipe.evaluation import conditioning as cond
from midipipe.generator.sampling import SampleConfig
from midipipe.tokens.remi import make_tokenizer
from midipipe.vae import sample as VS
from midipipe.vae import train as VT
from midipipe.vae.model import LabelVAE, VAEConfig, load_vae
from tests.test_generator_stages import project  # noqa: F401 (the tiny project)

VAE_PARAMS = {
    "vae": {
        "window": 48,
        "max_windows": 8,
        "eval_windows": 4,
        "model": {
            "d_model": 32,
            "n_head": 2,
            "d_ff": 64,
            "n_enc_layer": 1,
            "n_dec_layer": 1,
            "d_latent": 4,
            "dropout": 0.0,
        },
        "train": {"epochs": 2, "batch_size": 4, "device": "cpu", "precision": "fp32"},
    },
    "generate_vae": {
        "pieces_per_composer": 2,
        "max_tokens": 32,
        "real_chunks_per_piece": 2,
        "latent_windows_per_piece": 2,
        "device": "cpu",
    },
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> LabelVAE:
    torch.manual_seed(0)
    cfg = {
        "vocab_size": 40,
        "n_labels": 3,
        "window": 16,
        "d_model": 16,
        "n_head": 2,
        "d_ff": 32,
        "n_enc_layer": 1,
        "n_dec_layer": 2,
        "d_latent": 4,
        "dropout": 0.0,
    }
    return LabelVAE(VAEConfig(**{**cfg, **overrides})).eval()


@pytest.fixture(scope="module")
def trained(project):  # noqa: F811
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump({**params, **VAE_PARAMS}))
    p = build(VT.VAEParams, VAE_PARAMS["vae"], "vae")  # what stage 12 does, via the library
    tp = merged_train(Params(), p.train)
    data = project / "data"
    job, metrics = VT.train(
        p,
        tp,
        data / "tokens" / "remi",
        data / "manifest.parquet",
        data / "composers.json",
        project / "models" / "vae",
        project / "checkpoints" / "vae",
    )
    write_metrics(project / "metrics" / "vae.json", metrics)
    curves = project / "metrics" / "vae_curve.csv", project / "metrics" / "vae_loss.png"
    write_curves(job.history, *curves, "VAE", ("train_recon_ce", "valid_recon_ce"))
    return project


@pytest.fixture(scope="module")
def generated(trained):
    gp = build(VS.GenerateVAEParams, VAE_PARAMS["generate_vae"], "generate_vae")  # stage 13
    metrics, _ = VS.evaluate_vae(
        gp,
        trained / "models" / "vae",
        trained / "data" / "tokens" / "remi",
        trained / "data" / "manifest.parquet",
        trained / "outputs" / "generated_vae",
        trained / "metrics" / "vae_confusion.png",
        trained / "metrics" / "vae_latent.png",
        trained / "models" / "genre_phrase",  # none: the judge is fitted on train excerpts
    )
    write_metrics(trained / "metrics" / "vae_generation.json", metrics)
    return trained


# -- the model -------------------------------------------------------------------------------


@pytest.mark.parametrize(("layer_norm", "label_add"), [(True, False), (False, True)])
def test_cached_decoding_matches_the_full_forward(layer_norm, label_add):
    model = tiny(layer_norm=layer_norm, label_add=label_add)
    ids, labels = torch.randint(4, 40, (2, 10)), torch.tensor([1, 2])
    memory = model.memory(torch.randn(2, 4), labels)
    full = model.decode(ids, memory, labels)
    cache = model.new_cache()
    steps = [model.decode(ids[:, :0], memory, labels, cache)]
    steps += [model.decode(ids[:, i : i + 1], memory, labels, cache) for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == layer_norm


def test_the_posterior_ignores_padding_and_the_label_changes_the_decoder():
    model = tiny()
    ids = torch.randint(4, 40, (1, 8))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    for a, b in zip(model.posterior(ids), model.posterior(padded), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    z = torch.zeros(1, 4)
    one, two = torch.tensor([1]), torch.tensor([2])
    assert not torch.allclose(
        model.decode(ids, model.memory(z, one), one), model.decode(ids, model.memory(z, two), two)
    )


def test_kl_is_zero_at_the_own_component_only():
    model = tiny()
    labels = torch.tensor([1])
    mu, logvar = model.prior_mean[labels], model.prior_logvar[labels]
    assert float(model.kl_per_dim(mu, logvar, labels).detach().abs().max()) < 1e-6
    assert float(model.kl_per_dim(mu, logvar, torch.tensor([2])).detach().sum()) > 0.1


def test_windows_longer_than_the_model_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="longer than the model's 16"):
        model.posterior(torch.randint(4, 40, (1, 17)))
    tok = make_tokenizer()
    model = tiny(vocab_size=len(tok.vocab), pad_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="longer than the model's window 16"):
        VS.sample(model, tok, [1], SampleConfig(guidance=1.0, max_tokens=17))


def test_sampling_always_decodes_and_respects_the_length():
    tok = make_tokenizer()
    model = tiny(vocab_size=len(tok.vocab), pad_id=tok.pad_token_id, window=40)
    out = VS.sample(model, tok, [0, 1, 2], SampleConfig(guidance=1.0, max_tokens=40, seed=3))
    assert len(out) == 3
    for ids, stats in out:
        assert len(ids) <= 40 and stats["tokens"] <= 40
        tok.decode(ids)  # an untrained model still yields decodable REMI
    again = VS.sample(model, tok, [0, 1, 2], SampleConfig(guidance=1.0, max_tokens=40, seed=3))
    assert [ids for ids, _ in again] == [ids for ids, _ in out]  # seeded


def test_prior_scale_0_draws_the_components_mean():
    model = tiny()
    labels = torch.tensor([1, 2, 1])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.sample_prior(labels, g, 0.0), model.prior_mean[labels])
    drawn = model.sample_prior(labels, torch.Generator().manual_seed(0), 0.5)
    full = model.sample_prior(labels, torch.Generator().manual_seed(0), 1.0)
    mean = model.prior_mean[labels]
    assert torch.allclose(drawn - mean, 0.5 * (full - mean))
    assert float((full - mean).abs().min()) > 0  # scale 1: the component's own spread
    with pytest.raises(ParamError, match="generate_vae.prior_scale"):
        VS.GenerateVAEParams(prior_scale=-1.0)


def test_guidance_mixes_the_same_z_with_label_0():
    """Where label 1 reads like label 0, guided logits equal the conditional ones: so guided
    pieces equal unguided pieces exactly only if both streams share z and the cache."""
    tok = make_tokenizer()
    model = tiny(vocab_size=len(tok.vocab), pad_id=tok.pad_token_id, window=40, label_add=True)
    plain = SampleConfig(guidance=1.0, max_tokens=40, seed=3)
    guided = SampleConfig(guidance=3.0, max_tokens=40, seed=3)
    unguided = VS.sample(model, tok, [1, 2], plain)
    mixed = VS.sample(model, tok, [1, 2], guided)
    assert [s["guided"] for _, s in mixed] == [True, True]
    assert [ids for ids, _ in mixed] != [ids for ids, _ in unguided]
    with torch.no_grad():
        model.label.weight[1] = model.label.weight[0]
    same = VS.sample(model, tok, [1], guided)[0][0]
    assert same == VS.sample(model, tok, [1], plain)[0][0]
    for ids, _ in mixed:
        tok.decode(ids)


def test_label_dropout_drops_the_decoders_label_not_the_kls():
    model = tiny()
    batch = {"ids": torch.randint(4, 40, (2, 8)), "labels": torch.tensor([1, 2]), "progress": 1.0}
    p = VT.VAEParams(kl_anneal_frac=0.0, label_dropout=0.999)
    torch.manual_seed(0)
    _, dropped = VT.loss(model, batch, p, 1)
    torch.manual_seed(0)
    torch.rand(2)  # the draw that drops labels
    logits, mu, logvar = model(batch["ids"], batch["labels"], dec_labels=torch.zeros(2).long())
    recon = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["ids"].flatten())
    assert dropped["recon_ce"] == pytest.approx(recon.item(), rel=1e-5)
    kl = model.kl_per_dim(mu, logvar, batch["labels"]).sum(1).mean().item()
    assert dropped["kl"] == pytest.approx(kl, rel=1e-5)  # to the own component still
    torch.manual_seed(0)
    _, kept = VT.loss(model, batch, VT.VAEParams(kl_anneal_frac=0.0), 1)
    assert kept["recon_ce"] != pytest.approx(dropped["recon_ce"], rel=1e-6)


# -- params and annealing --------------------------------------------------------------------


def test_params_are_checked_by_key():
    with pytest.raises(ParamError, match="vae.model.vocab_size"):
        VT.VAEParams(model={"vocab_size": 3})
    with pytest.raises(ParamError, match="vae.free_bits"):
        VT.VAEParams(free_bits=-1.0)
    with pytest.raises(ParamError, match="vae.label_dropout"):
        VT.VAEParams(label_dropout=1.0)
    with pytest.raises(ParamError, match="generate_vae: guidance"):
        VS.GenerateVAEParams(guidance=0.5)
    with pytest.raises(ParamError, match="generate_vae: top_p"):
        VS.GenerateVAEParams(top_p=0.0)
    with pytest.raises(ParamError, match="generate_vae.judge_min_ratio"):
        VS.GenerateVAEParams(judge_min_ratio=0.5)


def test_kl_annealing_ramps_then_holds():
    p = VT.VAEParams(kl_weight=0.5, kl_anneal_frac=0.5)
    assert [p.beta(x) for x in (0.0, 0.25, 0.5, 1.0)] == [0.0, 0.25, 0.5, 0.5]
    assert VT.VAEParams(kl_weight=0.5, kl_anneal_frac=0.0).beta(0.0) == 0.5


def test_free_bits_floor_the_pushed_kl():
    model = tiny()
    batch = {
        "ids": torch.randint(4, 40, (2, 8)),
        "labels": torch.tensor([1, 2]),
        "progress": 1.0,
    }
    torch.manual_seed(0)
    low, logs = VT.loss(model, batch, VT.VAEParams(kl_anneal_frac=0.0, free_bits=0.0), 1)
    torch.manual_seed(0)
    high, _ = VT.loss(model, batch, VT.VAEParams(kl_anneal_frac=0.0, free_bits=100.0), 1)
    pushed = 4 * 100.0 - logs["kl"]  # 4 dimensions floored at 100 nats, over 8 tokens
    assert float((high - low).detach()) == pytest.approx(pushed / 8, rel=1e-3)


# -- the conditioning suite ------------------------------------------------------------------


def test_relative_cosine_rewards_the_own_label():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 6)) * 3
    ref = np.concatenate([centres[y] + rng.normal(size=(20, 6)) for y in (0, 1)])
    ref_y = [0] * 20 + [1] * 20
    gen = np.concatenate([centres[y] + rng.normal(size=(5, 6)) for y in (0, 1)])
    right, wrong = [0] * 5 + [1] * 5, [1] * 5 + [0] * 5
    assert cond.relative_cosine(gen, right, ref, ref_y) > 0.3
    assert cond.relative_cosine(gen, wrong, ref, ref_y) < -0.3
    assert math.isnan(cond.relative_cosine(gen, right, ref, [0] * 40))


def test_latent_space_silhouette_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(10, 3)) + 8 * k for k in range(3)])
    labels = [1] * 10 + [2] * 10 + [3] * 10
    out = cond.latent_space(z, labels, {1: "a", 2: "b", 3: "c"}, tmp_path / "z.png")
    assert out["silhouette"] > 0.8 and (tmp_path / "z.png").stat().st_size > 1000
    mixed = cond.latent_space(z, rng.permutation(labels), {}, None)
    assert abs(mixed["silhouette"]) < 0.2
    assert cond.latent_space(z, [1] * 30, {}, None)["silhouette"] is None


# -- stages 12 and 13 ------------------------------------------------------------------------


def test_train_stage_logs_recon_and_kl_apart(trained):
    model_dir = trained / "models" / "vae"
    for name in ("model.safetensors", "config.json", "composers.json", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["kind"] == "label_vae" and config["n_labels"] == 4 and config["window"] == 48
    metrics = json.loads((trained / "metrics" / "vae.json").read_text())
    assert metrics["epochs"] == 2 and metrics["train_pieces"] == 9
    for key in ("best_valid_recon_ce", "best_valid_kl", "final_train_recon_ce", "final_train_kl"):
        assert math.isfinite(metrics[key]), key
    header = (trained / "metrics" / "vae_curve.csv").read_text().splitlines()[0].split(",")
    assert {"train_recon_ce", "train_kl", "train_beta", "valid_recon_ce", "valid_kl"} <= set(header)
    assert (trained / "metrics" / "vae_loss.png").stat().st_size > 1000
    assert not (trained / "checkpoints" / "vae").exists()


def test_generate_stage_writes_midi_and_the_suite(generated):
    mids = sorted(p.name for p in (generated / "outputs" / "generated_vae").glob("*.mid"))
    assert mids == ["alpha_0.mid", "alpha_1.mid", "beta_0.mid", "beta_1.mid"]
    for name in mids:
        symusic.Score(str(generated / "outputs" / "generated_vae" / name))
    m = json.loads((generated / "metrics" / "vae_generation.json").read_text())
    assert m["composers_evaluated"] == 2 and m["chance"] == 0.5
    assert m["judge"].startswith("hand-crafted") and m["judge_composers"] == "alpha,beta"
    assert 0 <= m["cond_acc"] <= 1 and 0 <= m["judge_real_acc"] <= 1
    assert m["judge_ratio"] == pytest.approx(m["judge_real_acc"] / 0.5)
    assert m["cond_acc_counts"] is m["judge_counts"] is (m["judge_ratio"] >= 2.0)
    assert {"vae_pitch_range_oa", "vae_alpha_pitch_range_oa", "real_beta_polyphony_mean"} <= set(m)
    assert -2 <= m["relative_cosine"] <= 2 and -2 <= m["relative_cosine_real_test"] <= 2
    assert m["latent_labels"] == 2 and -1 <= m["silhouette"] <= 1
    assert m["novelty_pieces"] == 4 and m["novelty_real_pieces"] > 0
    assert 0 <= m["novelty_lcs_median"] <= m["novelty_lcs_max"] <= m["max_tokens"]
    assert all(not isinstance(v, dict | list) for v in m.values())
    rows = (generated / "metrics" / "vae_confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + 4  # the generated pieces
    for png in ("vae_confusion.png", "vae_latent.png"):
        assert (generated / "metrics" / png).stat().st_size > 1000


# -- generate_file and its errors ------------------------------------------------------------


def test_generate_file_and_its_errors(trained, tmp_path):
    model_dir = trained / "models" / "vae"
    out = VS.generate_file(model_dir, "BETA", tmp_path / "b.mid", seed=1, max_tokens=24)
    assert out["composer"] == "beta" and out["model"] == "vae" and out["tokens"] <= 24
    symusic.Score(str(tmp_path / "b.mid"))
    with pytest.raises(ValueError, match="unknown composer 'chopin'; known: alpha, beta, any"):
        VS.generate_file(model_dir, "chopin", tmp_path / "c.mid")
    with pytest.raises(ValueError, match="longer than the model's window 48"):
        VS.generate_file(model_dir, "alpha", tmp_path / "c.mid", max_tokens=49)

    other = tmp_path / "other_vocab"
    shutil.copytree(model_dir, other)
    make_tokenizer({"use_programs": False}).save(other / "tokenizer.json")
    with pytest.raises(ValueError, match="checkpoint vocabulary"):
        VS.generate_file(other, "alpha", tmp_path / "c.mid")
    with pytest.raises(ValueError, match="not a label-conditioned VAE"):
        load_vae(trained / "models" / "generator")


def test_cli_generate_model_vae(trained, tmp_path):
    out = tmp_path / "cli.mid"
    cmd = [sys.executable, "-m", "midipipe.cli", "generate", "--model", "vae", "--composer"]
    folder = ["--model-dir", str(trained / "models" / "vae"), "-o", str(out)]
    proc = subprocess.run(
        [*cmd, "alpha", *folder, "--max-tokens", "16"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["model"] == "vae"
    symusic.Score(str(out))
    proc = subprocess.run([*cmd, "chopin", *folder], capture_output=True, text=True)
    assert proc.returncode == 2 and "known: alpha, beta, any" in proc.stderr
