"""Chords bottom-up (`generator.note_order: pitch`): the training pieces' notes sorted by pitch
at each position and program, and sampling that only goes up there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
import yaml

from midipipe.core.errors import ParamError
from midipipe.generator import windows as gd
from midipipe.generator.generate import GenerateParams, trained_sampling
from midipipe.generator.gpt import GPT, GPTConfig
from midipipe.generator.order import (
    PitchOrder,
    chord_intervals,
    in_order,
    interval_log_probs,
    trained_order,
)
from midipipe.generator.sampling import (
    GrammarState,
    RemiGrammar,
    Request,
    SampleConfig,
    choose,
    generate,
    generate_batch,
)
from midipipe.generator.train import GeneratorParams, save_generator
from midipipe.tokens.dataset import Piece
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def chords_score() -> symusic.Score:
    """Two tracks (piano, strings) with chords whose notes differ in length, so miditok's
    (duration, pitch) order is not the pitch order."""
    score = symusic.Score(480)
    for program, base in ((0, 60), (48, 40)):
        track = symusic.Track(program=program)
        for bar in range(4):
            t = bar * 1920
            for k, (step, length) in enumerate(((0, 1920), (7, 480), (4, 960), (-5, 240))):
                track.notes.append(symusic.Note(t, length, base + step + bar, 80 - k))
        score.tracks.append(track)
    return score


def notes(tokenizer, ids) -> list[tuple]:
    score = tokenizer.decode([int(i) for i in ids])
    return sorted(
        (t.program, n.time, n.pitch, n.duration, n.velocity) for t in score.tracks for n in t.notes
    )


def runs(tokenizer, ids) -> list[list[tuple[int, int]]]:
    """(program, pitch) of the notes of each position, in token order."""
    inv = {i: t for t, i in tokenizer.vocab.items()}
    out, program = [], 0
    for i in ids:
        kind, _, value = inv[int(i)].partition("_")
        if kind in ("Bar", "Position"):
            out.append([])
        elif kind == "Program":
            program = int(value)
        elif kind == "Pitch" and out:
            out[-1].append((program, int(value)))
    return out


def bottom_up(run: list[tuple[int, int]]) -> bool:
    """Whether each program's pitches go up within one position's notes."""
    return all(
        (pitches := [p for q, p in run if q == program]) == sorted(pitches)
        for program in {q for q, _ in run}
    )


def test_sorting_keeps_the_music_and_puts_chords_bottom_up(tokenizer):
    ids = np.asarray(tokenizer.encode(chords_score()).ids)
    order = PitchOrder(tokenizer.vocab)
    out = order.sort(ids)
    assert sorted(out.tolist()) == sorted(ids.tolist())
    assert notes(tokenizer, out) == notes(tokenizer, ids)  # the same notes decode
    assert any(r != sorted(r) for r in runs(tokenizer, ids))  # miditok's order is not pitch's
    assert all(r == sorted(r) for r in runs(tokenizer, out))
    assert (order.sort(out) == out).all()
    assert len(order.sort(ids[:0])) == 0


def test_an_unfinished_note_stays_last(tokenizer):
    ids = np.asarray(tokenizer.encode(chords_score()).ids)
    inv = {i: t for t, i in tokenizer.vocab.items()}
    cut = next(k for k in range(len(ids) - 1, 0, -1) if inv[int(ids[k])].startswith("Pitch_"))
    out = PitchOrder(tokenizer.vocab).sort(ids[: cut + 1])
    assert out[-1] == ids[cut]


def test_training_windows_and_valid_pieces_are_sorted(tokenizer):
    ids = np.asarray(tokenizer.encode(chords_score()).ids)
    cfg = gd.WindowConfig.for_tokenizer(tokenizer, len(ids) + 1, start_frac=1.0)
    order = PitchOrder(tokenizer.vocab)
    window, _ = gd.WindowSampler(cfg, None, order).sample(
        Piece(ids, np.zeros(0), 1), 1, np.random.default_rng(0)
    )
    assert (window[1 : len(ids) + 1] == order.sort(ids)).all()
    assert GeneratorParams(note_order="pitch").note_order == "pitch"
    with pytest.raises(ParamError, match="generator.note_order"):
        GeneratorParams(note_order="random")


def allowed_pitches(tokenizer, tokens: list[str], ascending: bool) -> set[int]:
    grammar = RemiGrammar(tokenizer)
    state = GrammarState(grammar, 1, torch.device("cpu"), ascending)
    for t in tokens:
        state.step(torch.tensor([tokenizer.vocab[t]]))
    mask = state.allowed()[0]
    return {int(grammar.value[i]) for i in mask.nonzero()[:, 0] if grammar.kind[i] == "Pitch"}


def test_ascending_allows_only_pitches_above_those_played_at_the_position(tokenizer):
    note = ["Velocity_79", "Duration_1.0.8"]
    chord = ["Bar_None", "Position_0", "Program_0", "Pitch_60", *note, "Program_0"]
    free = allowed_pitches(tokenizer, chord, False)
    assert 50 in free and 60 not in free  # no pitch twice, else anything
    assert min(allowed_pitches(tokenizer, chord, True)) == 61
    other = [*chord[:-1], "Program_48"]  # another program starts its own chord
    assert 50 in allowed_pitches(tokenizer, other, True)
    later = [*chord[:-1], "Position_4", "Program_0"]  # and so does the next position
    assert {50, 60} <= allowed_pitches(tokenizer, later, True)


def test_ascending_sampling_writes_chords_bottom_up(tokenizer):
    ids, _ = generate(
        tiny_model(tokenizer),
        tokenizer,
        0,
        cfg=SampleConfig(max_tokens=300, seed=3, ascending=True),
    )
    assert all(map(bottom_up, runs(tokenizer, ids)))
    assert tokenizer.tokens_errors(ids) == 0


def test_the_model_folder_says_the_note_order(tmp_path, tokenizer):
    tokenizer_json = tmp_path / "tokenizer.json"
    tokenizer.save(tokenizer_json)
    model = GPT(GPTConfig(vocab_size=len(tokenizer.vocab), n_layer=1, d_model=16, n_head=2))
    save_generator(model, tmp_path / "p", {"n_ids": 2}, tokenizer_json, "none", "pitch")
    save_generator(model, tmp_path / "t", {"n_ids": 2}, tokenizer_json)
    assert trained_order(tmp_path / "p", tokenizer.vocab) is not None
    assert trained_order(tmp_path / "t", tokenizer.vocab) is None
    (tmp_path / "t" / "training.json").unlink()  # a folder from before the file
    assert trained_order(tmp_path / "t", tokenizer.vocab) is None
    pieces = [np.asarray(tokenizer.encode(chords_score()).ids)]
    assert in_order(pieces, None) is pieces
    sorted_ = in_order(pieces, PitchOrder(tokenizer.vocab))
    for _ in range(2):  # re-iterable, as novelty reads the training pieces more than once
        assert all(r == sorted(r) for p in sorted_ for r in runs(tokenizer, p))


def test_chord_steps_are_counted_to_the_nearest_pitch_before_at_a_position_and_program(
    tokenizer,
):
    ids = np.asarray(tokenizer.encode(chords_score()).ids)
    order = PitchOrder(tokenizer.vocab)
    up = order.sort(ids)
    counts = chord_intervals([(up, 1), (up, 2), (up, 2)], order, 4)
    # each chord is -5, 0, +4, +7 around its base: 5, 4 and 3 semitones up, 4 bars x 2 tracks
    assert {k: c for k, c in enumerate(counts[2]) if c} == {3: 16, 4: 16, 5: 16}
    assert sum(counts[0]) == 3 * 24 and sum(counts[1]) == 24 and not any(counts[3])
    logp = np.array(interval_log_probs(counts))
    assert (logp[:, 4] > logp[:, 2]).all() and np.allclose(np.exp(logp).sum(1), 1, atol=1e-3)
    assert logp[2, 4] > logp[1, 4] > logp[3, 4]  # more chords, further from the pooled
    # in miditok's order (0, +7, +4, -5): to the nearest pitch before, up or down
    assert runs(tokenizer, ids)[1][:4] == [(0, 60), (0, 67), (0, 64), (0, 55)]
    steps = order.nearest_steps(ids)
    assert {k: c for k, c in enumerate(steps) if c} == {7: 8, 3: 8, 5: 8}


def played(tokenizer, state: GrammarState, tokens: list[str]) -> None:
    """Row 0 plays `tokens`; row 1 only their bars and positions (nothing at its position)."""
    for t in tokens:
        token = tokenizer.vocab[t]
        state.step(torch.tensor([token, token if t.startswith(("Bar", "Pos")) else 0]))


def test_the_chord_prior_biases_pitches_by_their_distance_to_the_nearest_played(tokenizer):
    grammar = RemiGrammar(tokenizer)
    note = ["Velocity_79", "Duration_1.0.8"]
    chord = ["Bar_None", "Position_0", "Program_0", "Pitch_60", *note]
    prior = torch.nn.functional.pad(torch.arange(128.0).repeat(2, 1), (0, 1))  # 128: none
    vocab = tokenizer.vocab
    state = GrammarState(grammar, 2, torch.device("cpu"), False, chords=True)
    played(tokenizer, state, [*chord, "Program_0", "Pitch_67", *note, "Program_0"])
    state.allowed()
    bias = state.chord_bias(prior)
    assert [bias[0, vocab[f"Pitch_{p}"]] for p in (50, 62, 64, 66, 72)] == [10, 2, 3, 1, 5]
    assert bias[0, vocab["Bar_None"]] == 0
    assert not bias[1].any()  # nothing played at the position yet
    # bottom-up, the nearest allowed is the note just below: the step up
    state = GrammarState(grammar, 2, torch.device("cpu"), True, chords=True)
    played(tokenizer, state, [*chord, "Program_0"])
    allowed = state.allowed()
    bias = state.chord_bias(prior)
    assert bias[0, vocab["Pitch_64"]] == 4 and bias[0, vocab["Pitch_72"]] == 12
    assert not allowed[0, vocab["Pitch_59"]]
    with pytest.raises(ValueError, match="chord_prior"):
        SampleConfig(chord_prior=((0.0,) * 12,))


def test_sampling_measures_chords_as_training_counts_them(tokenizer):
    """Replayed through the sampler's grammar state, an encoded two-track piece (in miditok's
    order and bottom-up) gives each note the distance `nearest_steps` counts for the prior:
    the two are written apart, and the prior is only right where they agree."""
    grammar = RemiGrammar(tokenizer)
    order = PitchOrder(tokenizer.vocab)
    distance = torch.nn.functional.pad(torch.arange(128.0)[None], (0, 1), value=128.0)
    raw = np.asarray(tokenizer.encode(chords_score()).ids)
    for ids in (raw, order.sort(raw)):
        state = GrammarState(grammar, 1, torch.device("cpu"), False, chords=True)
        seen = np.zeros(128, dtype=np.int64)
        for i in ids:
            state.allowed()
            d = int(state.chord_bias(distance)[0, int(i)])
            if state.is_pitch[int(i)] and d < 128:
                seen[d] += 1
            state.step(torch.tensor([int(i)]))
        counted = order.nearest_steps(ids)
        assert counted.sum() > 8 and np.array_equal(seen, counted)


def test_the_chord_prior_comes_after_the_repetition_penalty():
    logits = torch.tensor([[2.0, 2.0]])
    allowed = torch.ones(1, 2, dtype=torch.bool)
    cfg = SampleConfig(repetition_penalty=2.0, top_p=1.0)
    penalized = torch.tensor([[True, False]])
    bias = torch.tensor([[1.0, 0.0]])

    def pick(u: float) -> int:
        return choose(logits, allowed, cfg, penalized, torch.tensor([[u]]).double(), bias).item()

    # 2 / 2 + 1 = 2: both tokens at 0.5 (the prior first, (2 + 1) / 2 = 1.5: token 0 at 0.38)
    assert pick(0.45) == 0 and pick(0.55) == 1


def test_the_chord_prior_needs_its_counts(tmp_path, tokenizer):
    with pytest.raises(ParamError, match="generate.chord_prior"):
        GenerateParams(chord_prior=-1.0)
    assert trained_sampling(tmp_path, tokenizer.vocab, 0.0) == {}
    with pytest.raises(ParamError, match="intervals.json"):
        trained_sampling(tmp_path, tokenizer.vocab, 1.0)  # a model from before the file: retrain
    (tmp_path / "training.json").write_text(json.dumps({"note_order": "pitch"}))
    assert trained_sampling(tmp_path, tokenizer.vocab, 0.0) == {"ascending": True}
    (tmp_path / "intervals.json").write_text(json.dumps({"counts": [[1] * 128] * 2}))
    trained = trained_sampling(tmp_path, tokenizer.vocab, 2.0)
    assert trained["ascending"] and len(trained["chord_prior"]) == 2
    assert trained["chord_prior"][0][5] == pytest.approx(2 * np.log(1 / 128), abs=1e-3)


def test_the_chord_prior_has_a_row_for_every_composer_sampled(tokenizer):
    model = tiny_model(tokenizer)  # composer ids 0..3
    prior = ((0.0,) * 128,) * 2  # the pooled row and composer 1 only
    sample = SampleConfig(max_tokens=8, chord_prior=prior)
    generate(model, tokenizer, 1, cfg=sample)
    with pytest.raises(ValueError, match="composer id 3"):
        generate(model, tokenizer, 3, cfg=sample)


def test_a_chord_prior_shapes_the_chords_the_model_samples(tokenizer):
    """With the model's logits flat over the grammar, a prior that allows only a fifth to the
    nearest placed pitch makes every chord step a fifth; without it they spread out."""
    model = tiny_model(tokenizer)
    with torch.no_grad():  # flat logits: every token the grammar allows is equally likely
        for p in model.parameters():
            p.zero_()
    fifth = tuple(tuple(0.0 if k == 7 else -1e4 for k in range(128)) for _ in range(4))
    order = PitchOrder(tokenizer.vocab)
    steps = {}
    for name, prior in (("off", ()), ("fifth", fifth)):
        cfg = SampleConfig(max_tokens=300, min_tokens=300, chord_prior=prior, top_p=1.0)
        rows = [Request(1, [], seed) for seed in range(16)]
        taken = generate_batch(model, tokenizer, rows, cfg)
        steps[name] = sum(order.nearest_steps(np.asarray(ids)) for ids, _ in taken)
    assert steps["off"].sum() > 5 and steps["off"][7] < steps["off"].sum()
    assert steps["fifth"].sum() > 5 and steps["fifth"][7] == steps["fifth"].sum()


def test_the_cli_samples_an_old_model_folder_without_the_prior(tmp_path, caplog):
    """A folder from before `intervals.json`: stage 09 stops, the CLI and demo sample on."""
    with pytest.raises(ParamError, match="intervals.json"):
        trained_sampling(tmp_path, {}, 1.0)
    with caplog.at_level("WARNING"):
        assert trained_sampling(tmp_path, {}, 1.0, strict=False) == {}
    assert "without the chord prior" in caplog.text
    with pytest.raises(ParamError, match="finite weight"):
        trained_sampling(tmp_path, {}, float("inf"), strict=False)
    for bad in ("{not json", '{"other": 1}', '{"counts": [[1, 2]]}', '{"counts": "abc"}'):
        (tmp_path / "intervals.json").write_text(bad)
        with pytest.raises(ParamError, match="intervals.json"):
            trained_sampling(tmp_path, {}, 1.0)


def test_the_defaults_sample_miditok_order_with_the_chord_prior():
    """params.yaml and the dataclasses agree: chords in miditok's order, the chord prior on
    at weight 1 (README, "The chord prior": guidance-3 conditioning embedded 0.56-0.61 ->
    0.92-0.96 over three training seeds, ASAP 0.33-0.44 -> 0.36-0.44)."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert raw["generator"]["note_order"] == GeneratorParams().note_order == "tokenizer"
    assert raw["generate"]["chord_prior"] == GenerateParams().chord_prior == 1.0
