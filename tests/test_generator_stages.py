"""Stages 08 (train the generator) and 09 (generate and evaluate), the music metrics, the
composer classifier's evaluation and the `midipipe generate` command, on a tiny project."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import symusic
import torch
import yaml

from midipipe.cli import generate as cli
from midipipe.core.errors import ParamError
from midipipe.core.params import Params, TokenizeParams, build, merged_train
from midipipe.core.reports import write_curves, write_metrics
from midipipe.data import composers
from midipipe.data.midi import piece_id
from midipipe.evaluation import generated as ev
from midipipe.evaluation import judge
from midipipe.evaluation import music_metrics as mm
from midipipe.generator import GenerateOptions, command
from midipipe.generator import generate as gen
from midipipe.generator import train as tr
from midipipe.generator import windows as gd
from midipipe.tokens.remi import make_tokenizer
from midipipe.tokens.tokenize import tokenize_files
from midipipe.training.fit import Fit, accumulate
from tests.conftest import build_midi

SPLITS = ["train"] * 4 + ["valid", "test"]
STAGES = Path(__file__).resolve().parents[1] / "stages"
PARAMS = {
    "generator": {
        "context": 64,
        "max_windows": 8,
        "eval_windows": 4,
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "d_ff": 64, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "precision": "fp32"},
    },
    "generate": {
        "pieces_per_composer": 1,
        "max_tokens": 24,
        "guidance": [1.0, 3.0],
        "real_chunks_per_piece": 2,
        "device": "cpu",
    },
}


pytestmark = pytest.mark.usefixtures("one_thread")


def train_stage(root: Path) -> None:
    """What stage 08 does, through the library, in a project folder."""
    p = build(tr.GeneratorParams, PARAMS["generator"], "generator")
    tp = merged_train(Params(), p.train)
    data = root / "data"
    job, metrics = tr.train(
        p,
        tp,
        data / "tokens" / "remi",
        data / "manifest.parquet",
        data / "composers.json",
        root / "models" / "generator",
        root / "checkpoints" / "generator",
    )
    write_metrics(root / "metrics" / "generator.json", metrics)
    curves = root / "metrics" / "generator_curve.csv", root / "metrics" / "generator_loss.png"
    write_curves(job.history, *curves, "GPT", ("train_nll", "valid_loss"))


def generate_stage(root: Path) -> None:
    """What stage 09 does, through the library, in a project folder."""
    gp = build(gen.GenerateParams, PARAMS["generate"], "generate")
    metrics = gen.evaluate_generator(
        gp,
        root / "models" / "generator",
        root / "data" / "tokens" / "remi",
        root / "data" / "manifest.parquet",
        root / "outputs" / "generated",
        root / "metrics" / "generation_confusion.png",
        root / "models" / "genre_phrase",  # none: the judge is fitted on train excerpts
    )
    write_metrics(root / "metrics" / "generation.json", metrics)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Two composers (alpha: 4/4 around C4, beta: 3/4 around C5) and one rare one, tokenized,
    with a manifest, composers.json and params.yaml; stage 08 already run."""
    root = tmp_path_factory.mktemp("genproject")
    plan = [("alpha", 60 + k % 3, 4, 4 + k, split) for k, split in enumerate(SPLITS)]
    plan += [("beta", 72 + k % 3, 3, 4 + k, split) for k, split in enumerate(SPLITS)]
    plan += [("gamma", 50, 4, 5, "train")]  # too rare: shares OTHER
    rows, items = [], []
    for name, pitch, meter, n_bars, split in plan:
        data = build_midi(n_bars=n_bars, numerator=meter, pitch=pitch)
        pid = piece_id(data)
        path = root / "files" / f"{pid}.mid"  # tokenize_files reads paths, as the CLI does
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append({"piece_id": pid, "split": split, "composer": name})
        items.append((pid, str(path)))
    tokenize_files(
        items, root / "data" / "tokens", TokenizeParams(workers=1, batch_size=16, musetok=False)
    )
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "manifest.parquet")
    table = composers.bucket([r["composer"] for r in rows], min_pieces=2)
    (root / "data" / "composers.json").write_text(json.dumps(table))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    train_stage(root)
    return root


@pytest.fixture(scope="module")
def generated(project) -> Path:
    generate_stage(project)
    return project


# -- stage 08 --------------------------------------------------------------------------------


def test_train_stage_writes_the_contracts(project):
    model_dir = project / "models" / "generator"
    for name in ("model.safetensors", "config.json", "composers.json", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    # the chord prior's counts, per composer id (row 0 all pieces), in miditok's order too
    counts = json.loads((model_dir / "intervals.json").read_text())["counts"]
    assert len(counts) == 4 and {len(row) for row in counts} == {128}
    assert sum(counts[0]) >= sum(map(sum, counts[1:])) > 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["n_composers"] == 4 and config["context"] == 64  # 0, alpha, beta, OTHER
    metrics = json.loads((project / "metrics" / "generator.json").read_text())
    for key in ("best_valid_loss", "best_valid_ppl", "epochs", "params", "train_tokens_per_s"):
        assert isinstance(metrics[key], int | float), key
    assert metrics["epochs"] == 1 and metrics["train_pieces"] == 9
    assert math.isfinite(metrics["best_valid_loss"]) and metrics["train_tokens_per_s"] > 0
    gain = metrics["opening_nll_unconditional"] - metrics["opening_nll_composer"]
    assert metrics["composer_gain_nats"] == pytest.approx(gain, abs=1e-5)
    curve = (project / "metrics" / "generator_curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,") and "valid_loss" in curve[0] and len(curve) == 2
    assert (project / "metrics" / "generator_loss.png").stat().st_size > 1000
    assert not (project / "checkpoints" / "generator").exists()  # resume state cleared


def test_params_are_checked_by_key():
    with pytest.raises(ParamError, match="generator.context"):
        tr.GeneratorParams(context=4)
    with pytest.raises(ParamError, match="generator.grad_accum"):
        tr.GeneratorParams(grad_accum=0)
    with pytest.raises(ParamError, match="generator.model.vocab_size"):
        tr.GeneratorParams(model={"vocab_size": 3})
    with pytest.raises(ParamError, match="generator.model.condition"):
        tr.GeneratorParams(model={"condition": "adaln"})
    with pytest.raises(ParamError, match="guidance must be >= 1"):
        gen.GenerateParams(guidance=[1.0, 0.5])


def test_grad_accumulation_matches_one_big_batch():
    """`training.accumulate` over micro-batches of unequal token counts gives the gradient
    of the whole batch's token-mean loss."""
    tok = make_tokenizer()
    torch.manual_seed(0)
    model = tr.build_model(
        tr.GeneratorParams(
            context=32, model={"n_layer": 1, "n_head": 2, "d_model": 32, "d_ff": 64, "dropout": 0.0}
        ),
        tok,
        3,
    )
    cfg = gd.WindowConfig.for_tokenizer(tok, 32, composer_dropout=0.5, token_dropout=0.0)
    pieces = [list(range(5, 5 + n)) for n in (10, 40, 25, 60)]
    whole = next(gd.train_batches(pieces, [1, 2, 1, 2], cfg, 4, 0, torch.Generator()))
    micro = [{k: v[i : i + 1] for k, v in whole.items()} for i in range(4)]
    pad = tok.pad_token_id
    job = Fit(
        model=model,
        train_batches=lambda *_: iter(()),
        steps_per_epoch=1,
        loss=lambda m, b: gd.loss(m, b, 0.1),
        evaluate=dict,
        grad_accum=4,
        micro_weight=lambda b: float((b["targets"] != pad).sum()),
    )
    scaler = torch.amp.GradScaler(enabled=False)
    grads = []
    for group in ([whole], micro):
        model.zero_grad()
        _, logs, weight = accumulate(job, model, group, None, scaler)
        grads.append([p.grad.clone() for p in model.parameters()])
        assert weight == int((whole["targets"] != pad).sum())
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    job.micro_weight = None  # equal shares: short windows would count as much as long ones
    model.zero_grad()
    accumulate(job, model, micro, None, scaler)
    assert not torch.allclose(model.tok.weight.grad, grads[0][0])


@pytest.mark.slow
def test_torchrun_two_processes(project, tmp_path):
    """Stage 08 under `torchrun --nproc_per_node 2` (gloo on CPU): both processes train, the
    main one writes the model and the metrics."""
    copy = tmp_path / "ddp"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("models", "metrics"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + [str(STAGES / "08_train_generator.py")],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((copy / "metrics" / "generator.json").read_text())
    assert metrics["processes"] == 2 and metrics["effective_batch"] == 8
    assert math.isfinite(metrics["best_valid_loss"])
    assert (copy / "models" / "generator" / "model.safetensors").is_file()
    assert not (copy / "checkpoints" / "generator").exists()


# -- stage 09 --------------------------------------------------------------------------------


def test_generate_stage_writes_decodable_midi_and_metrics(generated):
    out = generated / "outputs" / "generated"
    mids = sorted(p.name for p in out.glob("*.mid"))
    assert mids == ["alpha_g1.0_0.mid", "alpha_g3.0_0.mid", "beta_g1.0_0.mid", "beta_g3.0_0.mid"]
    for name in mids:
        score = symusic.Score(str(out / name))
        assert score.ticks_per_quarter > 0
        assert json.loads((out / name).with_suffix(".json").read_text())["ids"] is not None
    metrics = json.loads((generated / "metrics" / "generation.json").read_text())
    assert metrics["composers_evaluated"] == 2 and metrics["chance"] == 0.5
    assert metrics["judge"] == judge.FITTED and metrics["judge_composers"] == "alpha,beta"
    assert 0 <= metrics["judge_real_acc"] <= 1 and metrics["judge_min_ratio"] == 2.0
    for tag in ("g1.0", "g3.0"):
        acc = metrics[f"{tag}_cond_acc"]
        assert metrics[f"{tag}_cond_acc_ci_low"] <= acc <= metrics[f"{tag}_cond_acc_ci_high"]
        assert 0 < metrics[f"{tag}_cond_acc_p"] <= 1
        assert metrics[f"{tag}_cond_acc_counts"] is metrics["judge_counts"]
        assert metrics[f"{tag}_pieces"] == 2 and f"{tag}_repairs_per_piece" in metrics
        for m in mm.METRICS:
            assert {f"{tag}_{m}_oa", f"{tag}_{m}_w1", f"{tag}_{m}_mean"} <= set(metrics)
            assert {f"{tag}_alpha_{m}_oa", f"{tag}_beta_{m}_w1"} <= set(metrics)
    assert all(not isinstance(v, dict | list) for v in metrics.values())  # flat for dvc
    assert (generated / "metrics" / "generation_confusion.png").stat().st_size > 1000
    assert metrics["novelty_pieces"] == 4 and metrics["novelty_real_pieces"] > 0
    for side in ("novelty", "novelty_real"):
        lcs = [metrics[f"{side}_lcs_{k}"] for k in ("median", "p90", "max")]
        assert 0 <= lcs[0] <= lcs[1] <= lcs[2] <= metrics["max_tokens"]
    assert metrics["novelty_real_lcs_max"] > 0  # held-out pieces share bars with training


def test_accuracy_against_chance():
    lucky = ev.versus_chance(20, 50, 0.2)  # 40% where guessing gets 20%
    assert lucky["p"] < 0.01 and lucky["ci_low"] < 0.4 < lucky["ci_high"]
    assert ev.versus_chance(10, 50, 0.2)["p"] > 0.4  # exactly chance
    assert ev.versus_chance(2, 5, 0.2)["p"] > 0.05  # too few pieces to say
    assert math.isnan(ev.versus_chance(0, 0, 0.2)["p"])


def test_one_composer_is_said_plainly():
    tok = make_tokenizer()
    score = symusic.Score.from_midi(build_midi(n_bars=4))
    from midipipe.tokens.remi import encode

    ids = encode(tok, score)[0].tolist()
    piece = ev.Piece(ids, 1, 1.0, {"tokens": len(ids), "repairs": 0})
    out = ev.evaluate_generation(tok, [piece], [ev.Piece(ids, 1)], [("solo", 1)])
    assert out["g1.0_pitch_range_oa"] > 0.9 and out["g1.0_solo_pitch_range_oa"] > 0.9
    judged = judge.judge_conditioning(
        tok,
        judge.make_judge(tok, [("solo", 1)], [ev.Piece(ids, 1)], [], None),
        [piece],
        [ev.Piece(ids, 1)],
        [("solo", 1)],
        2.0,
    )
    assert "fewer than 2 frequent composers" in judged["note"]
    assert "g1.0_cond_acc" not in judged


# -- music metrics ---------------------------------------------------------------------------


def score_of(notes: list[tuple[float, float, int]], numerator: int = 4) -> symusic.Score:
    """A one-track score from (onset, duration, pitch) in quarter notes."""
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, numerator, 4))
    track = symusic.Track(program=0)
    for onset, dur, pitch in notes:
        track.notes.append(symusic.Note(int(onset * 480), int(dur * 480), pitch, 80))
    score.tracks.append(track)
    return score


def test_metrics_on_hand_made_pieces():
    c_major = mm.piece_metrics(
        score_of([(i, 1, p) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71])])
    )
    assert c_major["scale_consistency"] == 1.0
    assert c_major["pitch_class_entropy"] == pytest.approx(math.log2(7))
    assert c_major["polyphony"] == 1.0 and c_major["pitch_range"] == 11
    held = mm.piece_metrics(score_of([(0, 8, 60)]))
    assert held["polyphony"] == 1.0 and held["pitch_range"] == 0
    assert held["empty_beat_rate"] == pytest.approx(7 / 8)
    chord = mm.piece_metrics(score_of([(0, 4, 60), (0, 4, 64), (0, 2, 67), (1, 3, 60)]))
    assert chord["polyphony"] == pytest.approx((3 * 2 + 2 * 2) / 4)  # the two Cs count once
    chromatic = mm.piece_metrics(score_of([(i, 1, 60 + i) for i in range(12)]))
    assert chromatic["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert chromatic["scale_consistency"] == pytest.approx(7 / 12)
    same_bars = [(b * 4 + x, 0.5, 60) for b in range(4) for x in (0, 1, 1.5)]
    assert mm.piece_metrics(score_of(same_bars))["groove_consistency"] == 1.0
    shifted = [(0, 1, 60), (4.5, 1, 60)]  # bar 1: beat 1, bar 2: the offbeat -> 2 of 96 differ
    assert mm.piece_metrics(score_of(shifted))["groove_consistency"] == pytest.approx(1 - 2 / 96)
    assert mm.features(score_of(same_bars)).shape == (len(mm.FEATURES),)
    strings = score_of(same_bars)
    strings.tracks[0].program = 41  # viola: GM family 5 (strings)
    assert mm.instruments(strings)[5] == 1.0 and mm.instruments(strings).sum() == 1.0
    assert math.isnan(mm.piece_metrics(symusic.Score(480))["polyphony"])


def test_distances_and_excerpts():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    assert ev.overlap_area(a, a) == pytest.approx(1.0, abs=1e-3)
    assert ev.overlap_area(a, a + 20) < 0.01
    assert 0.4 < ev.overlap_area(a, a + 1) < 0.8
    assert ev.overlap_area([1.0] * 5, [1.0] * 3) == pytest.approx(1.0, abs=1e-3)  # constants
    assert ev.w1([0, 1], [2, 3]) == pytest.approx(2.0)
    ids, bars = list(range(100)), [0, 30, 50, 90]
    assert ev.excerpts(ids, bars, 60, 10) == [ids[0:50], ids[50:100]]
    assert [len(x) for x in ev.excerpts(ids, bars, 20, 10)] == [20, 20, 20, 10]  # long bars cut
    assert len(ev.excerpts(ids, bars, 20, 2)) == 2


# -- the generate command --------------------------------------------------------------------


def opts(project: Path, tmp_path: Path, **kw) -> GenerateOptions:
    base = dict(
        composer="alpha",
        out=str(tmp_path / "out.mid"),
        max_tokens=16,
        seed_length=8,
        model_dir=str(project / "models" / "generator"),
        data_dir=str(project / "data"),
        device="cpu",
        progress=False,
    )
    return GenerateOptions(**{**base, **kw})


def test_generate_command_with_a_held_out_primer(project, tmp_path):
    got = command.generate_command(opts(project, tmp_path, composer="BETA"))
    assert got["composer"] == "beta" and got["primer"] == "test piece of beta"
    assert 0 < got["primer_tokens"] <= 8
    assert symusic.Score(got["out"]).ticks_per_quarter > 0 and Path(got["tokens_json"]).exists()


def test_generate_command_errors(project, tmp_path):
    with pytest.raises(ValueError, match=r"unknown composer 'mahler'; known: alpha, beta, any"):
        command.generate_command(opts(project, tmp_path, composer="mahler"))
    with pytest.raises(ValueError, match="guidance must be >= 1"):
        command.generate_command(opts(project, tmp_path, guidance=0.5))
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi")
    with pytest.raises(ValueError, match="cannot use primer .*bad.mid"):
        command.generate_command(opts(project, tmp_path, primer=str(bad)))
    with pytest.raises(ValueError, match="missing: pass --primer"):
        command.generate_command(opts(project, tmp_path, data_dir=str(tmp_path / "nodata")))
    other = tmp_path / "other"
    other.mkdir()
    make_tokenizer({"num_velocities": 8}).save(other)
    with pytest.raises(ValueError, match="does not match .*checkpoint vocabulary"):
        command.generate_command(opts(project, tmp_path, tokenizer=str(other / "tokenizer.json")))


def test_generate_cli_parser_primer_file_and_interactive(project, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_generate_parser(parser.add_subparsers(dest="command"))
    primer = tmp_path / "primer.mid"
    primer.write_bytes(build_midi(n_bars=2))
    args = parser.parse_args(
        [
            "generate",
            "--composer",
            "alpha",
            "--guidance",
            "2",
            "--max-tokens",
            "12",
            "--seed-length",
            "0",
            "--primer",
            str(primer),
            "-o",
            str(tmp_path / "p.mid"),
            "--model-dir",
            str(project / "models" / "generator"),
            "--device",
            "cpu",
        ]
    )
    args.func(args)
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["primer"] == str(primer) and got["primer_tokens"] > 0 and got["guidance"] == 2.0

    answers = iter(["guidance=1.5 composer=any", "top_k=x", "", "q"])
    got = command.generate_command(
        opts(project, tmp_path, seed_length=0, interactive=True), ask=lambda _: next(answers)
    )
    assert got["takes"] == 3 and (tmp_path / "out_3.mid").exists()
    assert "error:" in capsys.readouterr().out  # a bad value is reported, the session goes on
