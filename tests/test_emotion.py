"""Bar-level valence/arousal: targets, rule estimate, CCC, the MLP, k-fold grouping, stage 07."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
import yaml
from safetensors.torch import save_file

from midipipe.core.errors import ParamError
from midipipe.core.io import write_rows
from midipipe.core.params import TrainParams, build, load, merged_train, section
from midipipe.data.midi import load_score
from midipipe.data.organize import BAR_VA_SCHEMA, MANIFEST_SCHEMA
from midipipe.emotion import (
    EmotionParams,
    plot_curves,
    predict_file,
    predict_quadrants,
    quadrant,
    regressor,
    rules,
)
from midipipe.emotion.evaluate import bar_metrics, piece_folds
from midipipe.emotion.regressor import (
    EmotionMLP,
    MLPConfig,
    concordance,
    fit_mlp,
    predict,
    stored_inputs,
    windows,
)
from midipipe.emotion.rules import RuleParams, bar_grid, estimate
from midipipe.emotion.targets import TargetParams, measure_targets, piece_target
from midipipe.emotion.train import HANDCRAFTED_C, train_emotion
from midipipe.musetok import checkpoint
from midipipe.musetok.events import encode_midi
from midipipe.musetok.latents import LatentWriter
from midipipe.musetok.model import MuseTok, MuseTokConfig
from midipipe.tokens.shards import TOKENS_SCHEMA
from tests.conftest import build_midi, write_corpus

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ["train", "train", "valid", "train", "train", "test"]


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: extra threads only spin on a busy CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- targets ------------------------------------------------------------------------------------


def test_piece_targets_from_quadrants_words_and_binary_labels():
    p = TargetParams()
    assert piece_target("Q1", 1.0, 1.0, p) == (0.5, 0.5)
    assert piece_target("Q3", None, None, p) == (-0.5, -0.5)
    # XMIDI words (any case): NRC VAD v1 scores rescaled to [-1, 1]
    assert piece_target("Sad", None, None, p) == (-0.55, -0.334)
    assert piece_target("exciting", None, None, p) == (0.9, 0.584)
    happy, quiet, angry = (piece_target(w, None, None, p) for w in ("happy", "quiet", "angry"))
    assert happy[0] > 0 and quiet[1] < 0 < angry[1] and angry[0] < 0
    # binary labels (VGMIDI phrases that disagree have no quadrant) scale by binary_scale
    assert piece_target(None, 1.0, -1 / 3, p) == pytest.approx((0.5, -1 / 6))
    assert piece_target("unknown-word", None, None, p) is None
    assert piece_target(None, None, None, p) is None
    custom = TargetParams(quadrants={"Q1": [0.8, 0.3]}, binary_scale=1.0)
    assert piece_target("Q1", None, None, custom) == (0.8, 0.3)
    assert piece_target(None, 1.0, -1.0, custom) == (1.0, -1.0)


def test_emotion_params_build_from_yaml_section_and_reject_unknown_keys():
    p = build(
        EmotionParams,
        {"targets": {"binary_scale": 1}, "mlp": {"window": 2}, "rules": {"valence": {"mode": 1.0}}},
        "emotion",
    )
    assert p.targets.binary_scale == 1.0 and p.mlp.window == 2 and p.rules.valence == {"mode": 1.0}
    assert p.targets.words["happy"] == [1.0, 0.47]
    with pytest.raises(ParamError, match="emotion.mlp.widow"):
        build(EmotionParams, {"mlp": {"widow": 2}}, "emotion")
    with pytest.raises(ValueError, match="unknown cue"):
        RuleParams(valence={"loudness": 1.0})
    with pytest.raises(ValueError, match="emotion.mlp.input"):
        build(EmotionParams, {"mlp": {"input": "pianoroll"}}, "emotion")
    with pytest.raises(ValueError, match="emotion.targets.words.joy"):
        TargetParams(words={"joy": [0.9]})


def _score(numerator: int = 4, first_note_bar: int = 0, n_bars: int = 4) -> symusic.Score:
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, numerator, 4))
    track = symusic.Track()
    bar = 480 * numerator
    for b in range(first_note_bar, first_note_bar + n_bars):
        track.notes.append(symusic.Note(b * bar, 480, 60, 80))
    score.tracks.append(track)
    return score


def test_measure_targets_map_4_quarter_measures_onto_bars_by_time():
    labels = np.array([[m, m / 10, -m / 10, 3 + m] for m in range(6)], np.float64)
    # 4/4, first note in bar 0: one measure per bar
    grid = bar_grid(_score(4))
    targets, raters = measure_targets(grid, labels, 4.0)
    assert np.allclose(targets, labels[:4, 1:3]) and raters.tolist() == [3, 4, 5, 6]
    # 3/4: bar 1 spans quarters 3..6 = 1 quarter of measure 0 and 2 of measure 1
    grid = bar_grid(_score(3))
    targets, raters = measure_targets(grid, labels, 4.0)
    assert targets[1, 0] == pytest.approx((1 * 0.0 + 2 * 0.1) / 3)
    assert raters[1] == 3  # the fewest raters among the measures it spans
    # leading empty bars are dropped by MuseTok: grid bar 0 is score bar 2 (quarters 8..12)
    grid = bar_grid(_score(4, first_note_bar=2))
    assert grid.first_bar == 2
    targets, _ = measure_targets(grid, labels[:5], 4.0)  # measures 0..4: the last bar has none
    assert targets[0, 0] == pytest.approx(0.2) and np.isnan(targets[-1]).all()
    # measure_quarters 0: rows index MuseTok bars directly
    targets, _ = measure_targets(grid, labels[:2], 0.0)
    assert np.allclose(targets[:2], labels[:2, 1:3]) and np.isnan(targets[2:]).all()


# -- rules --------------------------------------------------------------------------------------


def _styled(major: bool, qpm: float, velocity: int, low: int, per_bar: int) -> symusic.Score:
    """Four bars of a tonic triad arpeggio on C (major or minor), `per_bar` notes a bar."""
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.tempos.append(symusic.Tempo(0, qpm))
    track = symusic.Track()
    chord = [0, 4, 7, 12] if major else [0, 3, 7, 12]
    step = 1920 // per_bar
    for b in range(4):
        for k in range(per_bar):
            pitch = low + chord[k % 4]
            track.notes.append(symusic.Note(b * 1920 + k * step, step, pitch, velocity))
    score.tracks.append(track)
    return score


def test_rules_rank_a_bright_fast_loud_bar_above_a_dark_slow_quiet_one():
    happy = _styled(major=True, qpm=160, velocity=110, low=72, per_bar=16)
    sad = _styled(major=False, qpm=60, velocity=40, low=40, per_bar=2)
    p = RuleParams()
    hv, sv = estimate(happy, bar_grid(happy), p), estimate(sad, bar_grid(sad), p)
    assert (hv[:, 0] > sv[:, 0]).all() and (hv[:, 1] > sv[:, 1]).all()
    assert (hv > 0).all() and (sv < 0).all()
    assert np.abs(np.concatenate([hv, sv])).max() < 1
    # each cue alone moves its axis the documented way: only mode differs here
    minor = _styled(major=False, qpm=160, velocity=110, low=72, per_bar=16)
    assert (estimate(minor, bar_grid(minor), p)[:, 0] < hv[:, 0]).all()


def test_bar_cues_hold_the_rule_cues_bar_statistics_context_and_piece_means():
    score = _styled(major=True, qpm=120, velocity=90, low=60, per_bar=4)
    track = score.tracks[0]
    for k in range(16):  # bar 2 is dense, loud and high; bar 3 is empty
        track.notes.append(symusic.Note(2 * 1920 + k * 120, 120, 84, 120))
    score.tracks[0].notes = [n for n in track.notes if not 3 * 1920 <= n.time < 4 * 1920]
    score.tracks[0].notes.append(symusic.Note(4 * 1920, 480, 60, 90))  # a 5th bar
    grid = bar_grid(score)
    cues = rules.bar_cues(score, grid)
    n, k = grid.n_bars, len(rules.BAR_STATS)
    assert cues.shape == (n, len(rules.CUE_COLUMNS)) == (5, 4 * k)
    np.testing.assert_allclose(cues[:, :5], rules.bar_features(score, grid))
    col = {name: i for i, name in enumerate(rules.CUE_COLUMNS)}
    for name in ("onset_rate", "velocity_max", "pitch_high", "polyphony"):
        assert cues[2, col[name]] > cues[1, col[name]], name
    assert cues[3, col["empty"]] == 1 and cues[:3, col["empty"]].sum() == 0
    # context: the mean of the bars within CONTEXT_BARS (here all five); piece: all bars
    np.testing.assert_allclose(cues[:, k : 2 * k], np.tile(cues[:, :k].mean(0), (n, 1)))
    np.testing.assert_allclose(cues[:, 2 * k : 3 * k], np.tile(cues[:, :k].mean(0), (n, 1)))
    np.testing.assert_allclose(cues[:, 3 * k :], np.tile(cues[:, :k].std(0), (n, 1)))
    summary = np.concatenate([cues[:, :k].mean(0), cues[:, :k].std(0)])
    np.testing.assert_allclose(quadrant.cue_summary(cues), summary)  # the hand-crafted model's
    # the rule estimate reads only the first five columns
    p = RuleParams()
    np.testing.assert_allclose(rules.combine(cues, p), estimate(score, grid, p))


# -- metrics and the MLP ------------------------------------------------------------------------


def test_ccc_matches_a_hand_computation():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 4.0, 5.0])
    # means 2.5 and 3.25; population variances 1.25 and 1.6875; covariance 1.375
    expected = 2 * 1.375 / (1.25 + 1.6875 + 0.75**2)
    assert expected == pytest.approx(11 / 14)
    got = concordance(torch.tensor(np.stack([x, y], 1)), torch.tensor(np.stack([y, y], 1)))
    assert got.tolist() == pytest.approx([11 / 14, 1.0])
    metrics = bar_metrics(np.stack([x, np.full(4, 0.3)], 1), np.stack([y, y], 1))
    assert metrics["ccc_valence"] == pytest.approx(11 / 14)
    assert metrics["r_valence"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert metrics["rmse_valence"] == pytest.approx(np.sqrt(np.mean((x - y) ** 2)))
    assert metrics["ccc_arousal"] == pytest.approx(0.0) and metrics["r_arousal"] is None


def test_windows_stay_inside_each_piece():
    assert windows(np.array([0, 2, 5]), 1).tolist() == [
        [-1, 0, 1],
        [0, 1, -1],
        [-1, 2, 3],
        [2, 3, 4],
        [3, 4, -1],
    ]


def test_each_input_is_assembled_at_the_width_a_model_is_built_for():
    cfg = MuseTokConfig.cpu_default()
    latents = {
        "quantized": np.zeros((3, cfg.d_latent)),
        "encoder_out": np.zeros((3, cfg.enc_d_model)),
        "codes": np.zeros((3, cfg.num_quantizers), np.int64),
    }
    cues = np.arange(3.0 * len(rules.CUE_COLUMNS)).reshape(3, -1)
    for name in regressor.INPUTS:
        x = regressor.assemble(name, latents, cues)
        assert x.shape == (3, regressor.input_width(name, cfg)), name
    both = regressor.assemble("latents+cues", latents, cues)
    np.testing.assert_array_equal(both[:, cfg.d_latent :], cues)
    assert regressor.latent_of("cues") is None and regressor.input_width("cues", None) == len(
        rules.CUE_COLUMNS
    )


def test_stored_inputs_read_stage_04_parts_in_piece_order(tmp_path):
    writer = LatentWriter(tmp_path, pieces_per_part=1, metadata={"representation": "encoder_out"})
    for i, n in enumerate((2, 3)):
        writer.add(f"p{i}", np.full((n, 4), i, np.float32), np.full((n, 2), 10 + i), 0)
    writer.close()
    got = stored_inputs(tmp_path, ["p1", "p0"])
    assert set(got) == {"encoder_out", "codes"}
    assert got["encoder_out"][:, 0].tolist() == [1, 1, 1, 0, 0]
    assert got["codes"][:, 0].tolist() == [11, 11, 11, 10, 10]
    assert stored_inputs(tmp_path, ["p0", "missing"]) is None


def _tp(epochs: int) -> TrainParams:
    return TrainParams(lr=3e-3, batch_size=128, epochs=epochs, warmup_frac=0.05, device="cpu")


@pytest.mark.parametrize("loss", ["ccc", "mse"])
def test_mlp_learns_a_synthetic_latent_to_va_mapping(loss):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(960, 8)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(8, 2)) / 2)
    offsets = np.arange(0, 961, 16)  # 60 pieces of 16 bars
    train, test = np.arange(720), np.arange(720, 960)
    model = fit_mlp(
        MLPConfig("quantized", 8, window=1, hidden=64, dropout=0.0),
        x,
        y,
        np.ones(960),
        offsets,
        train,
        _tp(12),
        loss,
    )
    pred = predict(model, x, offsets, test)
    assert min(bar_metrics(pred, y[test])[k] for k in ("ccc_valence", "ccc_arousal")) > 0.85


def test_ridge_branch_fits_on_training_rows_only_and_mixes_into_the_output():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(640, 6)).astype(np.float32)
    y = np.clip(x[:, :2] * 0.3, -1, 1)  # a linear relation the ridge recovers
    offsets = np.arange(0, 641, 16)
    train, test = np.arange(480), np.arange(480, 640)
    cfg = MLPConfig("cues", 6, window=1, hidden=16, dropout=0.0, linear_mix=1.0)
    model = fit_mlp(cfg, x, y, np.ones(640), offsets, train, _tp(1), "mse")
    pred = predict(model, x, offsets, test)  # linear_mix 1: the ridge alone
    assert min(bar_metrics(pred, y[test])[k] for k in ("ccc_valence", "ccc_arousal")) > 0.95
    # no leakage: other targets on the held-out rows give the same model
    y2 = y.copy()
    y2[test] = -y[test]
    again = fit_mlp(cfg, x, y2, np.ones(640), offsets, train, _tp(1), "mse")
    np.testing.assert_allclose(predict(again, x, offsets, test), pred, atol=1e-6)
    # linear_mix 0: the MLP alone, no ridge (and a model saved without one loads)
    plain = fit_mlp(
        dataclasses.replace(cfg, linear_mix=0.0), x, y, np.ones(640), offsets, train, _tp(1), "mse"
    )
    assert "ridge_w" not in plain.state_dict()
    EmotionMLP(plain.cfg).load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="linear_mix"):
        regressor.MLPParams(linear_mix=1.5)


def test_mlp_learns_from_codes():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 8, size=(1600, 3))
    table = rng.uniform(-0.8, 0.8, size=(8, 2))
    y = table[codes[:, 0]]  # only the first level matters
    offsets = np.arange(0, 1601, 16)
    model = fit_mlp(
        MLPConfig("codes", 3, codebook_size=8, window=0, hidden=32, dropout=0.0),
        codes,
        y,
        np.ones(1600),
        offsets,
        np.arange(1200),
        _tp(12),
        "mse",
    )
    pred = predict(model, codes, offsets, np.arange(1200, 1600))
    assert bar_metrics(pred, y[1200:])["ccc_valence"] > 0.9


def test_kfold_never_puts_a_song_on_both_sides():
    groups = [f"song{i // 3}" for i in range(20)] + ["solo"]  # 7 songs of up to 3 clips + 1
    folds = piece_folds(groups, 5, seed=3)
    assert len(folds) == 5
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(21))  # each piece tested exactly once
    for train, test in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert piece_folds(["a", "a"], 5, 0) == []  # one song: nothing to hold out


# -- stage 07 and the CLI function --------------------------------------------------------------


def _project(root: Path, labelled: bool, words: bool = False, **emotion) -> list[Path]:
    """The files stage 07 reads, for 6 pieces of 8 bars (bar labels when `labelled`, XMIDI-style
    emotion words when `words`), and a randomly initialised MuseTok."""
    rows, bar_rows, tokens, paths = [], [], [], []
    for i in range(6):
        data = build_midi(n_bars=8, pitch=48 + 5 * i)
        pid = f"{i:032x}"
        path = root / "files" / f"{pid}.mid"  # for the CLI function; the stage reads the store
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
        ids, bar_starts = encode_midi(data)
        tokens.append({"piece_id": pid, "ids": ids, "bar_starts": bar_starts})
        meta = {
            "piece_id": pid,
            "source": "lab",
            "song_id": f"lab:{i}",
            "split": SPLITS[i],
            "emotion": ["happy", "sad", "angry"][i % 3] if words else None,
            "genres": [],
        }
        rows.append((meta, data))
        if labelled:
            bar_rows += [
                {
                    "piece_id": pid,
                    "bar": b,
                    "valence": (i - 2.5) / 4,
                    "arousal": (b - 3.5) / 5,
                    "n_raters": 3,
                }
                for b in range(8)
            ]
    rows = write_corpus(root / "data" / "corpus", rows)
    write_rows(root / "data" / "manifest.parquet", rows, MANIFEST_SCHEMA)
    write_rows(root / "data" / "labels" / "bar_va.parquet", bar_rows, BAR_VA_SCHEMA)
    write_rows(root / "data" / "tokens" / "musetok" / "part-00000.parquet", tokens, TOKENS_SCHEMA)
    torch.manual_seed(0)
    checkpoint.save(MuseTok(MuseTokConfig.cpu_default()), root / "models" / "musetok")
    params = {
        "emotion": {
            "folds": 2,
            "compare_inputs": False,
            "examples": 2,
            "train": {"epochs": 2, "batch_size": 16},
            **emotion,
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return paths


def _run_stage(root: Path, monkeypatch) -> dict:
    monkeypatch.chdir(root)
    p = build(EmotionParams, section("params.yaml", "emotion"), "emotion")
    train_emotion(p, merged_train(load("params.yaml"), p.train))
    return json.loads((root / "metrics" / "emotion.json").read_text())


def test_stage_without_labels_writes_the_rule_estimator_and_says_so(tmp_path, monkeypatch, caplog):
    paths = _project(tmp_path, labelled=False)
    metrics = _run_stage(tmp_path, monkeypatch)
    assert metrics["estimator"] == "rules" and metrics["labelled_bars"] == 0
    assert metrics["learned"] is False
    assert metrics["status"] == "skipped" and "no labelled data" in metrics["reason"]
    assert "no labelled data configured" in caplog.text
    config = json.loads((tmp_path / "models" / "emotion" / "config.json").read_text())
    assert config["estimator"] == "rules" and config["learned"] is False
    assert not (tmp_path / "models" / "emotion" / "model.safetensors").exists()
    assert not (tmp_path / "models" / "emotion" / "fallback").exists()
    curves = (tmp_path / "metrics" / "emotion_curves.csv").read_text()
    assert curves.splitlines()[0] == "piece,bar,estimator,valence,arousal"
    assert len(curves.splitlines()) == 1 + 2 * 8 and ",rules," in curves
    assert (tmp_path / "metrics" / "emotion_curves.png").stat().st_size > 0
    rows = predict_file(paths[0], tmp_path / "models" / "emotion")
    assert [r["bar"] for r in rows] == list(range(8))
    assert {r["estimator"] for r in rows} == {"rules"}


def test_stage_with_bar_labels_trains_and_evaluates_the_mlp(tmp_path, monkeypatch):
    paths = _project(tmp_path, labelled=True, compare_inputs=True, mlp={"input": "quantized"})
    metrics = _run_stage(tmp_path, monkeypatch)
    assert metrics["learned"] is True and metrics["configured_input"] == "quantized"
    assert metrics["labelled_bars"] == 48
    assert metrics["eval_targets"] == "listener_bars" and metrics["folds"] == 2
    labels = [f"mlp_{name}" for name in regressor.INPUTS] + ["rules", "mean"]
    for label in labels:
        assert f"kfold_{label}_ccc_valence" in metrics
    # the k-fold's best input is what the stage fits, serves and scores on test
    served = metrics["kfold_best_input"]
    best = max(
        regressor.INPUTS,
        key=lambda n: metrics[f"kfold_mlp_{n}_ccc_valence"] + metrics[f"kfold_mlp_{n}_ccc_arousal"],
    )
    assert served == best == metrics["served_input"] == metrics["input"]
    estimator = regressor.estimator_of(served)
    assert metrics["estimator"] == estimator
    for label in (f"mlp_{served}", "rules", "mean"):
        assert f"test_{label}_rmse_arousal" in metrics
    table = (tmp_path / "metrics" / "emotion_kfold.csv").read_text().splitlines()
    assert len(table) == 1 + 2 * 7 + 7 + 3  # header, folds x estimators, means, test
    folder = tmp_path / "models" / "emotion"
    config = json.loads((folder / "config.json").read_text())
    assert config["estimator"] == estimator and config["mlp"]["input"] == served
    rows = predict_file(paths[0], folder, tmp_path / "models" / "musetok")
    assert len(rows) == 8 and {r["estimator"] for r in rows} == {estimator}
    assert all(-1 < r["valence"] < 1 and -1 < r["arousal"] < 1 for r in rows)


def test_stage_mlp_on_rule_cues_needs_no_musetok(tmp_path, monkeypatch):
    paths = _project(tmp_path, labelled=True, mlp={"input": "cues"})
    metrics = _run_stage(tmp_path, monkeypatch)
    assert metrics["estimator"] == "mlp_cues" and "kfold_mlp_cues_ccc_valence" in metrics
    rows = predict_file(paths[0], tmp_path / "models" / "emotion", tmp_path / "no-musetok")
    assert len(rows) == 8 and {r["estimator"] for r in rows} == {"mlp_cues"}


def test_stage_mlp_on_latents_beside_cues(tmp_path, monkeypatch):
    paths = _project(tmp_path, labelled=True, mlp={"input": "latents+cues"})
    metrics = _run_stage(tmp_path, monkeypatch)
    assert metrics["estimator"] == "mlp_latents+cues" and metrics["learned"] is True
    assert "kfold_mlp_latents+cues_ccc_valence" in metrics
    assert "test_mlp_latents+cues_ccc_arousal" in metrics
    rows = predict_file(paths[0], tmp_path / "models" / "emotion", tmp_path / "models" / "musetok")
    assert len(rows) == 8 and {r["estimator"] for r in rows} == {"mlp_latents+cues"}
    # the cues model stage 10 serves where MuseTok cannot encode, fitted beside it
    fallback = tmp_path / "models" / "emotion" / "fallback"
    config = json.loads((fallback / "config.json").read_text())
    assert config["estimator"] == "mlp_cues" and config["fallback_for"] == "latents+cues"
    rows = predict_file(paths[0], fallback, tmp_path / "no-musetok")
    assert len(rows) == 8 and {r["estimator"] for r in rows} == {"mlp_cues"}
    assert [r["end_tick"] for r in rows[:-1]] == [r["start_tick"] for r in rows[1:]]


def test_stage_trains_on_piece_labels_when_no_bar_is_rated(tmp_path, monkeypatch):
    _project(tmp_path, labelled=False, words=True, mlp={"input": "cues"})
    metrics = _run_stage(tmp_path, monkeypatch)
    assert metrics["estimator"] == "mlp_cues" and metrics["labelled_pieces"] == 6
    assert metrics["labelled_bars"] == 48 and metrics["rated_bars"] == 0
    assert metrics["eval_targets"] == "piece_labels"


def test_predict_file_without_a_model_uses_rules_and_plots(tmp_path, make_midi):
    rows = predict_file(make_midi(n_bars=5, tempo=90.0), tmp_path / "no-model")
    assert len(rows) == 5 and {r["estimator"] for r in rows} == {"rules"}
    assert [r["start_s"] for r in rows] == pytest.approx([0, 8 / 3, 16 / 3, 8, 32 / 3], abs=1e-3)
    plot_curves(rows, tmp_path / "curve.png", "one piece")
    assert (tmp_path / "curve.png").stat().st_size > 0


# -- VGMIDI -------------------------------------------------------------------------------------


def test_vgmidi_traces_join_musetok_bars(external_data):
    from midipipe.data.sources.vgmidi import read_bar_labels

    root = external_data / "vgmidi"
    labels = read_bar_labels(sorted((root / "annotations").glob("vgmidi_raw_*.json")))
    assert len(labels) > 150
    checked = {4: 0, 3: 0}
    for name, bars in sorted(labels.items()):
        path = root / "midi" / name
        score = symusic.Score.from_file(str(path))
        sig = score.time_signatures[0] if len(score.time_signatures) else None
        numerator = sig.numerator if sig and sig.denominator == 4 else None
        if numerator not in checked or checked[numerator] >= 3:
            continue
        ids, bar_starts = encode_midi(path.read_bytes())
        grid = bar_grid(score, len(bar_starts))
        rows = np.array([[b.bar, b.valence, b.arousal, b.n_raters] for b in bars])
        targets, raters = measure_targets(grid, rows, 4.0)
        # VGMIDI measures are 4-quarter windows covering the piece (MuseTok may stop earlier)
        assert (grid.first_bar + grid.n_bars) * grid.bar_quarters <= len(rows) * 4 + 4
        assert np.isfinite(targets).all(axis=1).mean() > 0.9 and (raters[raters > 0] >= 1).all()
        if numerator == 4 and grid.first_bar == 0:  # one bar, one measure
            n = min(len(rows), grid.n_bars)
            assert np.allclose(targets[:n], rows[:n, 1:3])
        checked[numerator] += 1
    assert checked == {4: 3, 3: 3}


def test_quadrant_from_label_signs_and_binary_accuracies():
    targets = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5], [np.nan, 1], [0, 1]])
    assert quadrant.quadrant_of(targets).tolist() == [0, 1, 2, 3, -1, -1]
    probs = np.array([[0.1, 0.5, 0.1, 0.3], [0.4, 0.0, 0.0, 0.6]])  # Q2, then Q4 (Q1 + Q4 > 0.5)
    got = quadrant.accuracies(probs, np.array([1, 0]))
    assert got["quadrant_accuracy"] == 0.5  # Q4 for a Q1 piece is wrong...
    assert got["valence_accuracy"] == 1.0  # ...but right on valence
    assert got["arousal_accuracy"] == 0.5  # and wrong on arousal


def test_quadrant_head_learns_quadrants_from_bars_and_ignores_padding():
    x, offsets, labels = _quadrant_bars()
    p = quadrant.QuadrantParams(epochs=80, hidden=32, batch_size=16)
    train, held = np.arange(60), np.arange(60, 80)
    model = quadrant.fit(p, x, offsets, train, labels[train], TrainParams(lr=1e-3, seed=0))
    probs = quadrant.predict(model, x, offsets, held)
    assert probs.shape == (20, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert quadrant.accuracies(probs, labels[held])["quadrant_accuracy"] >= 0.8
    one = quadrant.predict(model, x, offsets, held[:1])  # alone: no padding beside it
    assert np.allclose(one, probs[:1], atol=1e-5)


def _quadrant_bars(n: int = 80, seed: int = 0):
    """Bars whose first two features carry their piece's quadrant signs, noisily."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    offsets = np.concatenate([[0], np.cumsum(rng.integers(3, 12, size=n))])
    x = rng.normal(size=(offsets[-1], 6)).astype(np.float32)
    for k, q in enumerate(labels):
        x[offsets[k] : offsets[k + 1], :2] += 2.0 * quadrant.SIGNS[q]
    return x, offsets, labels


def test_quadrant_ensemble_averages_heads_of_different_seeds(tmp_path):
    x, offsets, labels = _quadrant_bars()
    p = quadrant.QuadrantParams(epochs=5, hidden=16, batch_size=16, seeds=3)
    train, held = np.arange(60), np.arange(60, 80)
    heads = quadrant.fit_ensemble(p, TrainParams(lr=1e-3), x, offsets, train, labels[train])
    assert len(heads.members) == 3
    first = [m.net[0].weight for m in heads.members]
    assert not torch.allclose(first[0], first[1]) and not torch.allclose(first[1], first[2])
    probs = quadrant.predict(heads, x, offsets, held)
    assert probs.shape == (20, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    each = [quadrant.predict(m, x, offsets, held) for m in heads.members]
    assert np.allclose(probs, np.mean(each, 0), atol=1e-5)  # the mean of the heads' probabilities
    quadrant.save(heads, tmp_path, {})
    assert np.allclose(
        quadrant.predict(quadrant.load(tmp_path), x, offsets, held), probs, atol=1e-6
    )
    # a folder of one head, as stage 07 saved it before ensembles, still loads
    single = tmp_path / "single"
    quadrant.save(quadrant.QuadrantEnsemble([heads.members[0]]), single, {})
    state = {k.removeprefix("members.0."): v for k, v in heads.members[0].state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(single / "quadrant.safetensors"))
    config = json.loads((single / "quadrant.json").read_text())
    del config["members"]
    (single / "quadrant.json").write_text(json.dumps(config))
    assert np.allclose(
        quadrant.predict(quadrant.load(single), x, offsets, held), each[0], atol=1e-6
    )
    with pytest.raises(ValueError, match="seeds"):
        quadrant.QuadrantParams(seeds=0)


def test_served_probs_pool_linearly_or_in_log_space():
    head = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    hand = np.array([[0.1, 0.7, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]])
    probs = {"mlp": head, "handcrafted": hand}
    assert quadrant.served_probs({"mlp": 1.0, "handcrafted": 0.0}, probs, "log") is head
    assert quadrant.served_probs({"mlp": 0.0, "handcrafted": 1.0}, {"handcrafted": hand}) is hand
    half = {"mlp": 0.5, "handcrafted": 0.5}
    np.testing.assert_allclose(quadrant.served_probs(half, probs, "linear"), (head + hand) / 2)
    log = quadrant.served_probs(half, probs, "log")
    geometric = np.sqrt(head * hand)
    np.testing.assert_allclose(log, geometric / geometric.sum(1, keepdims=True), rtol=1e-6)
    # with a uniform head the log pool keeps the hand-crafted model's ranking, flattened
    assert log[1].argmax() == 0 and log[1].max() < hand[1].max()
    with pytest.raises(ValueError, match="geometric"):
        quadrant.served_probs(half, probs, "geometric")
    assert quadrant.served_name({"mlp": 0.3, "handcrafted": 0.0, "factorised": 0.7}) == (
        "mlp+factorised"
    )


def test_factorised_quadrants_are_the_product_of_the_axes():
    valence, arousal = np.array([0.8, 0.5]), np.array([0.3, 1.0])
    probs = quadrant.factorised({"arousal": arousal, "valence": valence})
    # Q1 v+ a+, Q2 v- a+, Q3 v- a-, Q4 v+ a-
    np.testing.assert_allclose(probs[0], [0.24, 0.06, 0.14, 0.56])
    np.testing.assert_allclose(probs[1], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(probs.sum(1), 1)
    # its binary accuracies read the axes back
    got = quadrant.accuracies(probs[:1], np.array([3]))
    assert got["valence_accuracy"] == 1.0 and got["arousal_accuracy"] == 1.0
    labels = np.arange(4)
    assert quadrant.axis_labels(labels, 0).tolist() == [1, 0, 0, 1]
    assert quadrant.axis_labels(labels, 1).tolist() == [1, 1, 0, 0]


def test_each_axis_model_learns_its_own_axis():
    """Feature 0 sets valence and feature 1 arousal: the models `fit_axes` names valence and
    arousal follow them (a swapped axis or label would read the other feature)."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 3))
    v, a = feats[:, 0] > 0, feats[:, 1] > 0
    labels = np.select([v & a, ~v & a, ~v & ~a], [0, 1, 2], 3)  # Q1..Q4
    models = quadrant.fit_axes(feats, labels, {"valence": 1.0, "arousal": 1.0}, seed=0)
    pos = quadrant.positive(models, feats)
    assert np.mean((pos["valence"] > 0.5) == v) > 0.95
    assert np.mean((pos["arousal"] > 0.5) == a) > 0.95
    assert np.mean(quadrant.factorised(pos).argmax(1) == labels) > 0.9


def test_factorised_member_needs_both_sides_of_each_axis_in_every_fold():
    from midipipe.emotion.train import axes_split

    folds = [(np.arange(0, 8), np.arange(8, 12)), (np.arange(4, 12), np.arange(0, 4))]
    assert axes_split(np.arange(12) % 4, folds)
    # Q1 and Q2 only: arousal is high everywhere, no binary arousal model can be fitted
    assert not axes_split(np.arange(12) % 2, folds)
    # every quadrant in train, but one fold fits on Q1 and Q4 only (valence positive)
    assert not axes_split(np.array([0, 3] * 4 + [1, 2] * 2), folds)


def test_mix_weights_cover_the_simplex_and_the_choice_takes_the_best_loglik():
    two, three = quadrant.mix_weights(2), quadrant.mix_weights(3)
    assert two[0] == (1.0, 0.0) and two[-1] == (0.0, 1.0) and len(two) == 21
    assert len(three) == 231 and len(set(three)) == 231  # (20 + 2 choose 2)
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in three)
    assert quadrant.mix_weights(3, 2) == [
        (1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5),
        (0.0, 1.0, 0.0), (0.0, 0.5, 0.5), (0.0, 0.0, 1.0),
    ]  # fmt: skip
    labels = np.array([0, 1, 2, 3])
    right = np.eye(4) * 0.7 + 0.075  # sure of the right quadrant
    wrong = np.roll(right, 1, axis=1)
    uniform = np.full((4, 4), 0.25)
    best = quadrant.choose_mix({"mlp": wrong, "handcrafted": uniform, "factorised": right}, labels)
    for pool in quadrant.POOLS:
        assert best[pool][1] == {"mlp": 0.0, "handcrafted": 0.0, "factorised": 1.0}
        assert best[pool][0] == pytest.approx(np.log(0.775))
    # without the factorised member the uniform one beats the wrong one
    best = quadrant.choose_mix({"mlp": wrong, "handcrafted": uniform}, labels)
    assert best["linear"][1]["handcrafted"] > 0.5


def test_choice_folds_keep_songs_together_and_give_up_on_one_quadrant():
    from types import SimpleNamespace

    from midipipe.emotion.train import choice_folds

    signs = quadrant.SIGNS[np.arange(24) % 4] * 0.5
    bars = SimpleNamespace(groups=[f"s{k // 2}" for k in range(24)], piece_targets=signs)
    train = np.arange(24)
    folds = choice_folds(bars, train, 5)
    assert len(folds) == 5
    for a, b in folds:
        assert not {bars.groups[k] for k in a} & {bars.groups[k] for k in b}
    assert sorted(np.concatenate([b for _, b in folds]).tolist()) == list(range(24))
    assert choice_folds(SimpleNamespace(groups=["one"] * 24, piece_targets=signs), train, 5) is None
    same = np.tile([0.5, 0.5], (24, 1))  # every piece Q1
    assert choice_folds(SimpleNamespace(groups=bars.groups, piece_targets=same), train, 5) is None


def test_stage_trains_the_quadrant_head_and_reports_binary_accuracies(
    tmp_path, monkeypatch, capsys
):
    paths = _project(
        tmp_path,
        labelled=False,
        words=True,
        mlp={"input": "cues"},
        min_quadrant_pieces=2,
        quadrant={"seeds": 2, "folds": 2, "epochs": 10},
    )
    metrics = _run_stage(tmp_path, monkeypatch)
    assert metrics["quadrant_status"] == "done" and metrics["eval_split"] == "test"
    for prefix in ("", "handcrafted_", "majority_", "served_"):
        for key in ("quadrant", "valence", "arousal"):
            assert 0 <= metrics[f"{prefix}{key}_accuracy"] <= 1
    weights = {m: metrics[f"quadrant_{m}_weight"] for m in quadrant.MEMBERS}
    assert sum(weights.values()) == pytest.approx(1)
    assert metrics["quadrant_served"] == quadrant.served_name(weights)
    # the mix is the one with the best out-of-fold log-likelihood on train, all three
    # members in it, each scored on the eval split and out of fold
    assert metrics["quadrant_choice_folds"] == 2
    pool = metrics["quadrant_pool"]
    choice = {pl: metrics[f"quadrant_choice_{pl}_loglik"] for pl in quadrant.POOLS}
    assert pool == max(choice, key=choice.get)
    assert metrics["quadrant_oof_served_loglik"] == pytest.approx(choice[pool], abs=1e-6)
    for m in quadrant.MEMBERS:
        assert metrics["quadrant_oof_served_loglik"] >= metrics[f"quadrant_oof_{m}_loglik"] - 1e-6
    for key in ("quadrant", "valence", "arousal"):
        assert 0 <= metrics[f"factorised_{key}_accuracy"] <= 1
    assert metrics["factorised_valence_c"] in HANDCRAFTED_C
    assert metrics["quadrant_seeds"] == 2
    low, mean, high = (metrics[f"quadrant_member_accuracy_{s}"] for s in ("min", "mean", "max"))
    assert 0 <= low <= mean <= high <= 1
    folder = tmp_path / "models" / "emotion"
    got = predict_quadrants(paths[0], folder, tmp_path / "no-musetok")
    assert set(got["probabilities"]) == {"Q1", "Q2", "Q3", "Q4"}
    assert sum(got["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    from midipipe.cli import main

    main(["emotion", str(paths[0]), "--model-dir", str(folder), "--musetok-dir", "none"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("quadrant  Q1 ") and f"({metrics['quadrant_served']})" in line
    # the factorised member served alone: the product of the saved valence and arousal models
    config = json.loads((folder / "quadrant.json").read_text())
    alone = {"mlp": 0.0, "handcrafted": 0.0, "factorised": 1.0}
    (folder / "quadrant.json").write_text(json.dumps({**config, "weights": alone}))
    from midipipe.evaluation.features import LinearModel

    score = load_score(paths[0].read_bytes())
    window = json.loads((folder / "config.json").read_text())["cue_window"]
    grid = bar_grid(score, len(encode_midi(paths[0].read_bytes())[1]))
    cues = rules.bar_cues(score, grid, window)
    row = quadrant.handcrafted_row(score, cues)[None]
    valence = LinearModel.load(folder / "valence")  # sure of positive valence: axes apart
    valence.intercept = valence.intercept + np.array([-2.0, 2.0])
    valence.save(folder / "valence", {"features": list(quadrant.HANDCRAFTED)})
    sides = {a: LinearModel.load(folder / a).predict_proba(row)[:, 1] for a in quadrant.AXES}
    got = predict_quadrants(paths[0], folder, tmp_path / "no-musetok")["probabilities"]
    np.testing.assert_allclose(list(got.values()), quadrant.factorised(sides)[0], rtol=1e-5)
    # a model saved before the member weights names itself instead of failing on a key
    del config["weights"]
    (folder / "quadrant.json").write_text(json.dumps({**config, "head_weight": 0.5}))
    with pytest.raises(ValueError, match="re-run stage 07"):
        predict_quadrants(paths[0], folder, tmp_path / "no-musetok")


def test_quadrant_head_steps_aside_without_quadrant_labels(tmp_path, monkeypatch):
    _project(tmp_path, labelled=True, words=False, mlp={"input": "cues"})
    metrics = _run_stage(tmp_path, monkeypatch)  # listener traces, no piece quadrant
    assert metrics["quadrant_status"] == "skipped"
    assert "quadrant-labelled train pieces" in metrics["quadrant_reason"]
    assert "quadrant_accuracy" not in metrics


def test_quadrant_head_input_drops_only_the_piece_std_block_of_the_cues():
    k = len(rules.BAR_STATS)
    cues = np.arange(2.0 * len(rules.CUE_COLUMNS)).reshape(2, -1)
    both = np.concatenate([np.zeros((2, 3)), cues], 1)
    np.testing.assert_array_equal(quadrant.head_input(cues, "cues", False), cues[:, :-k])
    np.testing.assert_array_equal(quadrant.head_input(both, "latents+cues", False), both[:, :-k])
    assert quadrant.head_input(cues, "cues", True) is cues
    assert quadrant.head_input(both[:, :3], "quantized", False).shape == (2, 3)


def test_quadrant_split_names_what_is_missing():
    from types import SimpleNamespace

    from midipipe.emotion.train import quadrant_split

    bars = SimpleNamespace(splits=["train"] * 30 + ["valid"] * 10 + ["test"] * 2)
    one = np.zeros(42, int)
    assert "one quadrant only" in quadrant_split(bars, one, 20)
    labels = np.arange(42) % 4
    assert "fewer than emotion.min_quadrant_pieces=40" in quadrant_split(bars, labels, 40)
    train, held, split = quadrant_split(bars, labels, 20)
    assert split == "valid" and len(train) == 30 and len(held) == 10  # 2 stray test clips
    bars.splits = ["train"] * 30 + ["test"] * 12
    assert quadrant_split(bars, labels, 20)[2] == "test"
    bars.splits = ["train"] * 42
    assert "no quadrant-labelled test or valid piece" in quadrant_split(bars, labels, 20)
