"""Genre classifiers: phrase/chunk building, augmentation, metrics, pooling, bad inputs,
vocabulary checks, and both models trained end to end on hand-built MIDI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import symusic
import torch
from sklearn.metrics import (
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_recall_fscore_support,
)

import midipipe.genre.predict as gp
from midipipe.core.errors import ParamError
from midipipe.core.io import write_rows
from midipipe.core.params import TrainParams
from midipipe.data.organize import MANIFEST_SCHEMA
from midipipe.generator.gpt import GPT, GPTConfig, save_model
from midipipe.genre.encoder import Encoder, EncoderConfig
from midipipe.genre.hier_model import (
    AttentionPool,
    FrozenLM,
    HierClassifier,
    HierConfig,
    load_hier,
    save_hier,
)
from midipipe.genre.hier_train import resolve_lm, train_hier
from midipipe.genre.metrics import (
    multilabel_metrics,
    pool_mean,
    single_label_metrics,
    tune_threshold,
)
from midipipe.genre.params import GenreHierParams, GenreParams
from midipipe.genre.phrase_train import class_weights, train_phrase
from midipipe.genre.phrases import (
    Vocab,
    chunks,
    pad_batch,
    phrases,
    random_transpose,
    shift_range,
    transpose,
)
from midipipe.tokens.remi import encode, make_tokenizer
from midipipe.tokens.shards import TOKENS_SCHEMA
from midipipe.training.hooks import EarlyStop
from tests.conftest import build_midi, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return Vocab.of(tokenizer)


def remi_of(tokenizer, **kw):
    ids, bars = encode(tokenizer, symusic.Score.from_midi(build_midi(**kw)))
    return ids, bars


# -- phrases and chunks ----------------------------------------------------------------------


def test_phrases_have_cls_whole_bars_and_count_truncation(tokenizer, vocab):
    ids, bars = remi_of(tokenizer, n_bars=10)
    cut = phrases(ids, bars, vocab, bars_per_phrase=4, max_len=512)
    assert cut.n_bars == 10 and len(cut.seqs) == 2  # 10 bars: two 4-bar phrases, 2 left over
    bar_id = tokenizer.vocab["Bar_None"]
    for k, seq in enumerate(cut.seqs):
        assert seq[0] == vocab.cls_id and vocab.cls_id not in seq[1:]
        assert (seq == bar_id).sum() == 4
        assert np.array_equal(seq[1:], ids[bars[4 * k] : bars[4 * k + 4]])
    assert cut.truncated == 0
    short = phrases(ids, bars, vocab, bars_per_phrase=4, max_len=20)
    assert short.truncated == 2 and all(len(s) == 20 for s in short.seqs)
    assert phrases(ids, bars, vocab, 4, 512, max_phrases=1).seqs[0].tolist() == cut.seqs[0].tolist()
    assert phrases(ids[: bars[3]], bars[:3], vocab, 4, 512).seqs == []  # 3 bars < 1 phrase


def test_chunks_drop_empty_bars(tokenizer, vocab):
    score = symusic.Score.from_midi(build_midi(n_bars=12))
    track = score.tracks[0]
    bar = score.ticks_per_quarter * 4
    notes = [n for n in track.notes if not 2 * bar <= n.time < 5 * bar]  # bars 2-4 empty
    track.notes.clear()
    track.notes.extend(notes)
    ids, bars = encode(tokenizer, score)
    cut = chunks(ids, bars, vocab, bars_per_chunk=8, max_len=10_000)
    assert cut.n_bars == 9 and [
        int((s == tokenizer.vocab["Bar_None"]).sum()) for s in cut.seqs
    ] == [8, 1]
    assert chunks(ids, bars, vocab, 8, 16).truncated == 2


def test_transposition_stays_in_the_pitch_range(tokenizer, vocab):
    ids, bars = remi_of(tokenizer, n_bars=4, pitch=96)
    seq = phrases(ids, bars, vocab, 4, 512).seqs[0]
    lo, hi = shift_range(seq, vocab, 12)
    pitches = vocab.pitch_of[seq][vocab.pitch_of[seq] >= 0]
    assert hi == vocab.pitch_hi - pitches.max() and lo == -12
    up = transpose(seq, hi, vocab)
    assert vocab.pitch_of[up].max() == vocab.pitch_hi
    assert np.array_equal(up[vocab.pitch_of[seq] < 0], seq[vocab.pitch_of[seq] < 0])
    with pytest.raises(ValueError, match="pitch range"):
        transpose(seq, hi + 1, vocab)
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = random_transpose(seq, vocab, 12, rng)
        got = vocab.pitch_of[out][vocab.pitch_of[out] >= 0]
        assert got.min() >= vocab.pitch_lo and got.max() <= vocab.pitch_hi
        assert len(got) == len(pitches)


def test_drum_pitches_are_not_transposed(tokenizer, vocab):
    ids, bars = remi_of(tokenizer, n_bars=4, pitch=40, is_drum=True)
    seq = phrases(ids, bars, vocab, 4, 512).seqs[0]
    assert vocab.is_drum[seq].any() and shift_range(seq, vocab, 6) == (0, 0)
    assert np.array_equal(transpose(seq, 0, vocab), seq)


def test_class_weights_balance_the_train_split():
    w = class_weights([0, 0, 0, 1, 2, 2], 4)
    assert w.tolist() == pytest.approx([6 / 12, 6 / 4, 6 / 8, 0.0])
    counts = np.array([3, 1, 2])
    assert (w[:3].numpy() * counts) == pytest.approx([1.5] * 3)  # each class weighs the same


# -- models ----------------------------------------------------------------------------------


@torch.no_grad()
def test_attention_pool_shape_and_mask():
    torch.manual_seed(0)
    pool = AttentionPool(8, 4)
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    pooled, w = pool(x, mask)
    assert pooled.shape == (3, 8) and w.shape == (3, 5)
    assert w[0, 2:].abs().sum() == 0 and w[0].sum() == pytest.approx(1.0)
    assert torch.all(w[2] == 0) and torch.all(pooled[2] == 0)  # an empty piece: no NaN
    x2 = x.clone()
    x2[0, 2:] = 1e3  # padded chunks change nothing
    assert torch.allclose(pool(x2, mask)[0][0], pooled[0])
    head = HierClassifier(HierConfig(d_in=8, n_labels=3, d_attn=4))
    assert head(x, mask).shape == (3, 3)


@torch.no_grad()
def test_hier_head_standardises_away_a_shared_direction(tmp_path):
    torch.manual_seed(0)
    x, mask = torch.randn(4, 3, 8), torch.ones(4, 3, dtype=torch.bool)
    head = HierClassifier(HierConfig(d_in=8, n_labels=2, d_attn=4)).eval()
    head.fit_scaler(x.reshape(-1, 8))
    before = head(x, mask)
    shifted = x + 50 * torch.randn(8)  # what every chunk of an anisotropic LM shares
    head.fit_scaler(shifted.reshape(-1, 8))
    assert torch.allclose(head(shifted, mask), before, atol=1e-4)
    save_hier(head, tmp_path, {"kind": "hier"})
    loaded, _ = load_hier(tmp_path)
    assert torch.equal(loaded.center, head.center) and torch.equal(loaded.scale, head.scale)


@torch.no_grad()
def test_encoder_ignores_padding(tokenizer):
    torch.manual_seed(0)
    cfg = EncoderConfig.cpu_default(
        vocab_size=len(tokenizer.vocab), n_classes=3, n_layer=1, d_model=32, d_ff=64
    )
    model = Encoder(cfg).eval()
    a, b = np.arange(1, 11), np.arange(1, 40)
    alone = model(pad_batch([a], 0))
    together = model(pad_batch([a, b], 0))[:1]
    assert torch.allclose(alone, together, atol=1e-5)
    gpu = EncoderConfig.gpu_profile()
    assert (gpu.n_layer, gpu.d_model, gpu.n_head) == (6, 512, 8)


# -- metrics ---------------------------------------------------------------------------------


def test_single_label_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    probs = rng.random((60, 4))
    got = single_label_metrics(y, probs, ["a", "b", "c", "d"])
    pred = probs.argmax(1)
    assert got["accuracy"] == pytest.approx((pred == y).mean())
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    p, r, _, _ = precision_recall_fscore_support(y, pred, zero_division=0)
    assert [got[f"precision_{c}"] for c in "abcd"] == pytest.approx(p)
    assert [got[f"recall_{c}"] for c in "abcd"] == pytest.approx(r)


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.random((50, 6)) < 0.3
    y[np.arange(50), rng.integers(0, 6, 50)] = True  # every piece has a tag
    probs = np.clip(y * 0.4 + rng.random((50, 6)) * 0.6, 0, 1)
    got = multilabel_metrics(y, probs, 0.5)
    pred = probs >= 0.5
    assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert got["jaccard"] == pytest.approx(
        jaccard_score(y, pred, average="samples", zero_division=0)
    )
    assert got["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert got["subset_accuracy"] == pytest.approx((pred == y).all(1).mean())
    assert got["test_acc"] == pytest.approx(np.mean([y[i, probs[i].argmax()] for i in range(50)]))


def test_threshold_tuning_finds_the_separating_value():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    probs = np.where(y, 0.3, 0.1)  # positives sit at 0.3: any threshold in (0.1, 0.3] is best
    t = tune_threshold(y, probs)
    assert 0.1 < t <= 0.3
    assert multilabel_metrics(y, probs, t)["micro_f1"] == 1.0
    assert tune_threshold(np.zeros((0, 2), bool), np.zeros((0, 2))) == 0.5


def test_pool_mean_groups_in_order():
    keys, pooled = pool_mean(["s2", "s1", "s2"], np.array([[1.0, 0], [0, 1], [0, 1]]))
    assert keys == ["s2", "s1"] and pooled.tolist() == [[0.5, 0.5], [0, 1]]


def test_early_stop_empties_epochs_after_patience():
    from midipipe.training.fit import Fit

    scores = iter([0.5, 0.6, 0.55, 0.52, 0.9])
    calls = []
    job = Fit(
        model=torch.nn.Linear(1, 1),
        train_batches=lambda e, r: iter([e]),
        steps_per_epoch=1,
        loss=None,
        evaluate=lambda m: {"valid_f1": next(scores)},
        best_key="valid_f1",
        best_mode="max",
    )
    stop = EarlyStop(job, patience=2)
    for epoch in range(5):
        calls.append(list(job.train_batches(epoch, None)))
        job.history.append({"epoch": epoch + 1, **job.evaluate(None)})
    assert calls == [[0], [1], [2], [3], []]  # best at epoch 2, two worse ones, then nothing
    assert job.history[-1]["valid_f1"] == 0.52 and [h["epoch"] for h in stop.finish()] == [
        1,
        2,
        3,
        4,
    ]


def test_time_budget_stops_training_once_spent():
    from midipipe.training.fit import Fit

    job = Fit(
        model=torch.nn.Linear(1, 1),
        train_batches=lambda e, r: iter([e]),
        steps_per_epoch=1,
        loss=None,
        evaluate=lambda m: {"valid_f1": 0.5},
        best_key="valid_f1",
        best_mode="max",
    )
    EarlyStop(job, patience=0, budget_s=25.0)
    calls = []
    for epoch in range(5):
        calls.append(list(job.train_batches(epoch, None)))
        job.history.append({"epoch": epoch + 1, "epoch_s": 10.0, **job.evaluate(None)})
    assert calls == [[0], [1], [2], [], []]  # 30 s of training spent after epoch 3


def test_epochs_for_budget_stay_between_one_and_the_most():
    from midipipe.training.fit import Fit
    from midipipe.training.hooks import epochs_for_budget

    lin = torch.nn.Linear(4, 1)
    job = Fit(
        model=lin,
        train_batches=lambda e, r: iter([torch.ones(8, 4)] * 10),
        steps_per_epoch=10,
        loss=lambda m, b: (m(b).pow(2).mean(), {}),
        evaluate=lambda m: {},
    )
    before = lin.weight.detach().clone()
    assert epochs_for_budget(job, 1e-9, 30) == 1
    assert epochs_for_budget(job, 1e9, 30) == 30
    assert torch.equal(lin.weight, before)  # timed on a copy


def test_params_are_checked_by_name():
    with pytest.raises(ParamError, match="genre.label"):
        GenreParams(label="mood")
    with pytest.raises(ParamError, match="genre.model.vocab_size"):
        GenreParams(model={"vocab_size": 3})
    with pytest.raises(ParamError, match="genre_hier.bars_per_chunk"):
        GenreHierParams(bars_per_chunk=0)


# -- end to end on hand-built MIDI -----------------------------------------------------------

STYLES = {"low": dict(pitch=48, program=0), "high": dict(pitch=76, program=40, numerator=3)}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tokenizer):
    """A tiny organized + tokenized project: two styles, 10 songs each, split by song."""
    root = tmp_path_factory.mktemp("genre_project")
    (root / "tokens").mkdir()
    tokenizer.save(root / "tokens")
    manifest, tokens = [], []
    for style, kw in STYLES.items():
        for k in range(10):
            data = build_midi(n_bars=16 + k % 5, tempo=100.0 + 5 * k, **kw)
            pid = f"{style}{k:02d}"
            ids, bars = encode(tokenizer, symusic.Score.from_midi(data))
            tokens.append({"piece_id": pid, "ids": ids.tolist(), "bar_starts": bars.tolist()})
            split = "test" if k in (0, 1) else "valid" if k in (2, 3) else "train"
            manifest.append(
                (
                    {
                        "piece_id": pid,
                        "source": "t",
                        "song_id": f"t:{pid}",
                        "split": split,
                        "genres": [style, "tag"],
                        "period": style,
                    },
                    data,
                )
            )
    manifest = write_corpus(root / "corpus", manifest)
    write_rows(root / "tokens" / "part-00000.parquet", tokens, TOKENS_SCHEMA)
    write_rows(root / "manifest.parquet", manifest, MANIFEST_SCHEMA)
    return root


TINY_TRAIN = TrainParams(lr=3e-3, batch_size=16, epochs=5, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def phrase_model(project):
    p = GenreParams(
        label="period",
        min_class_pieces=2,
        patience=3,
        model={"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64},
    )
    out = project / "models" / "genre_phrase"
    tp = dataclasses.replace(TINY_TRAIN, lr=5e-3, batch_size=8, epochs=6)
    result = train_phrase(
        p,
        tp,
        project / "tokens",
        project / "manifest.parquet",
        out,
        project / "ckpt_phrase",
        project / "corpus",
        project / "no_latents",
    )
    return out, result


def test_phrase_model_trains_and_reports(phrase_model):
    out, r = phrase_model
    m = r.metrics
    assert r.classes == ["high", "low"] and m["n_classes"] == 2
    assert m["phrases_test"] == 16 and m["truncation_rate"] == 0.0  # 16 + 17 bars per class
    assert m["accuracy"] == 1.0 and m["song_accuracy"] == 1.0  # trivially separable styles
    assert m["metadata_baseline_piece_accuracy"] == 1.0  # programs give it away, as meant
    assert m["latent_baseline"].startswith("skipped: a split has no piece with latents")
    assert 0 <= m["handcrafted_baseline_piece_accuracy"] <= 1
    assert m["majority_baseline_piece_accuracy"] == 0.5  # 2 + 2 test pieces
    assert m["served"] in ("phrase_model", "handcrafted") and "log-likelihood" in m["served_choice"]
    assert m["budget_s"] == 0
    assert {"precision_low", "recall_high", "piece_macro_f1", "train_phrases_per_s"} <= set(m)
    json.dumps(m)  # flat and JSON-able
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_predict_phrase(phrase_model, tmp_path):
    out, _ = phrase_model
    good = tmp_path / "good.mid"
    good.write_bytes(build_midi(n_bars=8, **STYLES["high"]))
    got = gp.predict(good, model="phrase", top_k=1, model_dir=out)
    assert got["prediction"] == "high" and len(got["top_k"]) == 1
    assert set(got["probabilities"]) == {"high", "low"} and got["n_phrases"] == 2
    json.dumps(got)


def test_prediction_runs_a_small_model_on_one_thread(phrase_model, tmp_path, monkeypatch):
    predictor = gp.load_predictor("phrase", phrase_model[0])
    assert predictor.threads == 1 and gp.prediction_threads(10**8) == torch.get_num_threads()
    seen, forward = [], predictor.model.forward
    monkeypatch.setattr(
        predictor.model, "forward", lambda ids: seen.append(torch.get_num_threads()) or forward(ids)
    )
    song = tmp_path / "song.mid"
    song.write_bytes(build_midi(n_bars=8))
    torch.set_num_threads(2)
    try:
        assert "error" not in predictor.predict(song)
        assert set(seen) == {1} and torch.get_num_threads() == 2  # the caller's count is back
    finally:
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_lm(project, tokenizer):
    torch.manual_seed(0)
    lm = GPT(
        GPTConfig(
            vocab_size=len(tokenizer.vocab),
            n_layer=1,
            n_head=2,
            d_model=32,
            d_ff=64,
            context=128,
            dropout=0.0,
        )
    )
    save_model(lm, project / "lm")
    return project / "lm"


@pytest.fixture(scope="module")
def hier_model(project, tiny_lm):
    hp = GenreHierParams(min_tag_pieces=2, patience=3, d_attn=16)
    tp = dataclasses.replace(TINY_TRAIN, epochs=15, lr=1e-2, batch_size=4)
    out = project / "models" / "genre_hier"
    result = train_hier(
        hp,
        tp,
        project / "tokens",
        project / "manifest.parquet",
        out,
        project / "ckpt_hier",
        tiny_lm,
        corpus_dir=project / "corpus",
        latents_dir=None,
    )
    return out, result


@pytest.fixture(scope="module")
def model_dirs(phrase_model, hier_model):
    return {"phrase": phrase_model[0], "hier": hier_model[0]}


def test_hier_model_trains_tunes_and_predicts(hier_model, tmp_path):
    out, r = hier_model
    m = r.metrics
    assert m["status"] == "trained" and r.tags == ["high", "low", "tag"]
    assert m["truncation_rate"] > 0  # 8 bars of this music exceed the LM's 128-token context
    assert 0.05 <= m["threshold"] <= 0.95 and m["test_acc"] == 1.0  # "tag" is always true
    assert {
        "micro_f1",
        "macro_f1",
        "jaccard",
        "hamming_loss",
        "subset_accuracy",
        "metadata_baseline_micro_f1",
    } <= set(m)
    good = tmp_path / "low.mid"
    good.write_bytes(build_midi(n_bars=8, **STYLES["low"]))
    got = gp.predict(good, model="hier", model_dir=out, threshold=0.0)
    assert got["genres"] == sorted(
        got["probabilities"], key=got["probabilities"].get, reverse=True
    )  # threshold 0: every tag, best first
    assert got["threshold"] == 0.0 and got["n_chunks"] == 1


def silent_midi() -> bytes:
    """A valid MIDI file with a track but not one note."""
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.tracks.append(symusic.Track(name="piano", program=0))
    return score.dumps_midi()


@pytest.mark.parametrize("kind", ["phrase", "hier"])
def test_bad_inputs_get_a_clear_answer(kind, model_dirs, tmp_path):
    cases = {
        "short.mid": build_midi(n_bars=2),
        "drums.mid": build_midi(is_drum=True),
        "empty.mid": b"",
        "silent.mid": silent_midi(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    got = {n: gp.predict(tmp_path / n, model=kind, model_dir=model_dirs[kind]) for n in cases}
    assert got["drums.mid"]["error"].startswith("drum tracks only")
    assert got["empty.mid"]["error"] == "empty file (0 bytes)"
    assert got["silent.mid"]["error"] == "no notes"
    missing = gp.predict(tmp_path / "missing.mid", model=kind, model_dir=model_dirs[kind])
    assert "no such file" in missing["error"]
    if kind == "phrase":
        assert got["short.mid"]["error"] == "too short to classify: 2 bars, 4 needed"
    else:  # the last chunk of a piece may be shorter than bars_per_chunk, as in training
        assert "error" not in got["short.mid"] and got["short.mid"]["n_bars"] == 2
    for answer in got.values():
        json.dumps(answer)


@pytest.mark.parametrize("kind", ["phrase", "hier"])
def test_checkpoint_from_another_vocabulary_is_refused(kind, model_dirs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(model_dirs[kind], other)
    make_tokenizer({"num_velocities": 8}).save(other)  # a different tokenize.remi config
    with pytest.raises(ValueError, match="another vocabulary"):
        gp.load_predictor(kind, other)


def test_hier_model_refuses_a_retrained_lm(hier_model, tiny_lm, tmp_path):
    lm, model = tmp_path / "lm", tmp_path / "hier"
    shutil.copytree(tiny_lm, lm)
    shutil.copytree(hier_model[0], model)
    config = json.loads((model / "config.json").read_text())
    config["lm"]["path"] = str(lm)
    (model / "config.json").write_text(json.dumps(config))
    assert gp.load_predictor("hier", model).lm is not None  # its own LM: loads
    torch.manual_seed(1)
    save_model(
        GPT(GPTConfig(vocab_size=len(make_tokenizer().vocab), n_layer=1, n_head=2, d_model=32)),
        lm,
    )  # retrained LM
    with pytest.raises(ValueError, match="changed since"):
        gp.load_predictor("hier", model)


def test_hier_without_lm_is_skipped_plainly(project, tmp_path):
    r = train_hier(
        GenreHierParams(),
        TINY_TRAIN,
        project / "tokens",
        project / "manifest.parquet",
        tmp_path / "hier",
        tmp_path / "ck",
        None,
    )
    assert r.metrics["status"] == "skipped" and "no LM" in r.metrics["reason"]
    with pytest.raises(FileNotFoundError, match="was not trained"):
        gp.load_predictor("hier", tmp_path / "hier")


def test_lm_with_another_vocabulary_is_refused(tmp_path, tokenizer):
    save_model(GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=32, d_ff=64)), tmp_path)
    with pytest.raises(ValueError, match="vocabulary"):
        FrozenLM(tmp_path, tokenizer)


def tiny_gpt2(folder, vocab_size: int):
    """A GPT-2 folder as `save_pretrained` writes it; skips the test without transformers."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory, tokenizer):
    return tiny_gpt2(tmp_path_factory.mktemp("hf_gpt2"), len(tokenizer.vocab))


def test_hugging_face_gpt2_lm_from_a_local_folder(hf_gpt2, tmp_path, tokenizer, vocab):
    lm = FrozenLM(hf_gpt2, tokenizer)
    assert lm.kind == "hf-gpt2" and lm.d_model == 32 and lm.context == 64
    ids, bars = remi_of(tokenizer, n_bars=8)
    cut = chunks(ids, bars, vocab, 4, lm.context)
    emb = lm.embed(cut.seqs, batch_size=1)
    assert emb.shape == (2, 32) and np.allclose(emb, lm.embed(cut.seqs, batch_size=2), atol=1e-5)
    with pytest.raises(ValueError, match="another vocabulary"):
        FrozenLM(tiny_gpt2(tmp_path / "bad", 100), tokenizer)


def hier_over_lm(root, hp: GenreHierParams, tmp_path, epochs: int):
    """Stage 06 on the `project` layout in `root` with `hp.lm_path`, into tmp_path/genre_hier."""
    return train_hier(
        hp,
        dataclasses.replace(TINY_TRAIN, epochs=epochs, lr=1e-2, batch_size=4),
        root / "tokens",
        root / "manifest.parquet",
        tmp_path / "genre_hier",
        tmp_path / "ckpt",
        resolve_lm(hp),
        corpus_dir=root / "corpus",
        latents_dir=None,
    )


def test_hier_model_over_a_hugging_face_lm(project, hf_gpt2, tmp_path):
    hp = GenreHierParams(lm_path=str(hf_gpt2), min_tag_pieces=2, patience=2, d_attn=16)
    out = tmp_path / "genre_hier"
    r = hier_over_lm(project, hp, tmp_path, epochs=3)
    assert r.metrics["status"] == "trained" and r.metrics["lm_kind"] == "hf-gpt2"
    assert r.metrics["truncation_rate"] > 0  # 8 bars exceed its 64 positions: cut, counted
    good = tmp_path / "high.mid"
    good.write_bytes(build_midi(n_bars=12, **STYLES["high"]))
    got = gp.predict(good, model="hier", model_dir=out)
    assert got["n_chunks"] == 2 and set(got["probabilities"]) == {"high", "low", "tag"}


def test_latent_baseline_reads_stage_04_latents(tmp_path):
    from midipipe.genre.baselines import inputs, mean_latents, single_label
    from midipipe.musetok.latents import LatentWriter

    rng = np.random.default_rng(0)
    bars = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5, 4)) + 3.0}
    writer = LatentWriter(tmp_path, pieces_per_part=1)
    for pid, x in bars.items():
        writer.add(pid, x.astype(np.float32), np.zeros((len(x), 2), int), 0)
    writer.close()
    got, have = mean_latents(tmp_path, ["b", "a"])
    assert have.all() and np.allclose(got, [bars["b"].mean(0), bars["a"].mean(0)], atol=1e-6)
    some, have = mean_latents(tmp_path, ["a", "gone"])
    assert have.tolist() == [True, False] and np.allclose(some, [bars["a"].mean(0), np.zeros(4)])
    assert not mean_latents(tmp_path / "none", ["a"])[1].any()
    # the latent baseline runs on the pieces that have latents, however many lack them
    half = inputs([["a", "gone"] * 10, ["b", "gone"]], None, tmp_path)
    assert half.latent_status.startswith("done on the 11 of 22") and "latent" in half.x
    assert half.rows("latent", 1).tolist() == [True, False]
    none = inputs([["a"], ["gone"]], None, tmp_path)
    assert none.latent_status.startswith("skipped: a split has no piece") and not none.x
    probs = single_label(np.vstack([got, got]), np.array([1, 0, 1, 0]), got, n_classes=3)
    assert probs.shape == (2, 3) and probs[:, 2].sum() == 0 and probs[0].argmax() == 1
