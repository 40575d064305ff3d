"""Key normalisation of the generator's training windows and the composer position
(`generator.key`, `GPTConfig.composer_token`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midipipe.core.errors import ParamError
from midipipe.evaluation.music_metrics import MAJOR, MAJOR_PROFILE
from midipipe.generator import windows as gd
from midipipe.generator.gpt import GPT, GPTConfig
from midipipe.generator.keys import KeyShift, as_trained, primer_keys
from midipipe.generator.sampling import SampleConfig, generate
from midipipe.generator.train import GeneratorParams, save_generator
from midipipe.tokens.dataset import Piece
from midipipe.vae.train import BarWindowSampler, VAEParams

pytestmark = pytest.mark.usefixtures("one_thread")


def major_piece(vocab: dict[str, int], tonic: int) -> np.ndarray:
    """Notes of the major scale of `tonic`, drawn in proportion to the major key profile,
    between Bar tokens."""
    rng = np.random.default_rng(tonic)
    weight = np.zeros(12)
    weight[list(MAJOR)] = MAJOR_PROFILE[list(MAJOR)]
    pcs = rng.choice(12, size=200, p=weight / weight.sum())
    octaves = rng.integers(4, 7, size=200)
    ids = []
    for pc, octave in zip(pcs, octaves, strict=True):
        ids += [vocab["Bar_None"], vocab[f"Pitch_{12 * octave + (pc + tonic) % 12}"]]
    return np.array(ids)


def pitch_classes(keys: KeyShift, ids: np.ndarray) -> set[int]:
    p = keys.pitch[ids]
    return set((p[p >= 0] % 12).tolist())


@pytest.mark.parametrize("tonic", [0, 2, 3, 7, 11])
def test_a_major_piece_moves_to_c_major(tokenizer, tonic):
    keys = KeyShift(tokenizer.vocab)
    ids = major_piece(tokenizer.vocab, tonic)
    shift = keys.shift_of(ids)
    assert -5 <= shift <= 6 and (tonic + shift) % 12 == 0
    out = keys.normalise(ids)
    assert pitch_classes(keys, out) <= set(MAJOR)  # only C major's pitch classes
    assert keys.shift_of(out) == 0
    assert (out[::2] == ids[::2]).all()  # the Bar tokens stay


def test_transposition_keeps_range_and_leaves_drums(tokenizer):
    vocab = tokenizer.vocab
    keys = KeyShift(vocab)
    ids = np.array(
        [vocab["Pitch_108"], vocab["Pitch_21"], vocab["PitchDrum_36"], vocab["Bar_None"]]
    )
    up, down = keys.transpose(ids, 6), keys.transpose(ids, -5)
    assert up.tolist() == [vocab["Pitch_102"], vocab["Pitch_27"], ids[2], ids[3]]
    assert down.tolist() == [vocab["Pitch_103"], vocab["Pitch_28"], ids[2], ids[3]]
    assert keys.shift_of(np.array([vocab["Bar_None"]])) == 0  # nothing pitched: unmoved


def test_windows_are_transposed_by_their_piece_key(tokenizer):
    ids = major_piece(tokenizer.vocab, 2)  # D major
    cfg = gd.WindowConfig.for_tokenizer(tokenizer, 32, composer_dropout=0.0)
    keys = KeyShift(tokenizer.vocab)
    sampler = gd.WindowSampler(cfg, keys)
    rng = np.random.default_rng(0)
    for kind in (0, 1):
        window, composer = sampler.sample(Piece(ids, np.zeros(0), 3), kind, rng)
        assert composer == 3 and pitch_classes(keys, window) <= set(MAJOR)
    plain, _ = gd.WindowSampler(cfg).sample(Piece(ids, np.zeros(0), 3), 1, rng)
    assert not pitch_classes(keys, plain) <= set(MAJOR)


def test_key_param_is_checked():
    assert GeneratorParams(key="normalise").key == "normalise"
    with pytest.raises(ParamError, match="generator.key"):
        GeneratorParams(key="c_major")


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=40, n_layer=2, n_head=2, d_model=32, d_ff=64, context=16)
    return GPTConfig(**{**base, "n_composers": 4, "dropout": 0.0, **kw})


def test_composer_token_cached_forward_matches_full_past_the_context():
    torch.manual_seed(0)
    model = GPT(tiny(composer_token=True)).eval()
    ids, composer = torch.randint(4, 40, (2, 40)), torch.tensor([1, 3])
    with torch.no_grad():
        full, _ = model(ids, composer)
        cache = model.new_cache()
        parts = [model(ids[:, :5], composer, cache)[0]]
        parts += [
            model.decode_step(ids[:, i : i + 1], composer, cache)[:, None] for i in range(5, 40)
        ]
    assert full.shape == (2, 40, 40) and cache.pos == 41  # the composer position counts
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_every_token_of_a_window_sees_the_composer_position():
    torch.manual_seed(0)
    model = GPT(tiny(composer_token=True)).eval()
    ids, composer = torch.randint(4, 40, (1, 16)), torch.tensor([2])
    with torch.no_grad():
        before, _ = model(ids, composer)
        delta = torch.randn(32)  # not a constant: the LayerNorm would remove it
        model.composer_in.weight[2] += delta
        after, _ = model(ids, composer)
        later, _ = model(ids, composer, start_pos=5)  # not a sequence start: no composer position
        model.composer_in.weight[2] -= delta
        later_before, _ = model(ids, composer, start_pos=5)
    assert (before - after).abs().amax(-1).min() > 1e-4  # every position moved
    torch.testing.assert_close(later, later_before)


def test_composer_token_samples_the_same_with_and_without_cache(tokenizer):
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=len(tokenizer.vocab), context=64, composer_token=True)).eval()
    cfg = SampleConfig(max_tokens=40, seed=7, guidance=2.0)
    a, _ = generate(model, tokenizer, 3, cfg=cfg)
    b, _ = generate(model, tokenizer, 3, cfg=cfg, use_cache=False)
    assert a == b and tokenizer.tokens_errors(a) == 0


def test_vae_windows_are_transposed_too(tokenizer):
    ids = major_piece(tokenizer.vocab, 2)
    cfg = gd.WindowConfig.for_tokenizer(tokenizer, 31)
    keys = KeyShift(tokenizer.vocab)
    bars = np.arange(0, len(ids), 2)
    window, _ = BarWindowSampler(cfg, keys).sample(Piece(ids, bars, 1), 0, np.random.default_rng(0))
    assert pitch_classes(keys, window) <= set(MAJOR)
    with pytest.raises(ParamError, match="vae.key"):
        VAEParams(key="yes")


def test_the_model_folder_says_whether_primers_are_normalised(tmp_path, tokenizer):
    tokenizer_json = tmp_path / "tokenizer.json"
    tokenizer.save(tokenizer_json)
    model = GPT(tiny(vocab_size=len(tokenizer.vocab)))
    for key, normalised in (("normalise", True), ("none", False)):
        save_generator(model, tmp_path / key, {"n_ids": 4}, tokenizer_json, key)
        assert (primer_keys(tmp_path / key, tokenizer.vocab) is not None) == normalised
    (tmp_path / "none" / "training.json").unlink()  # a folder from before the file
    assert primer_keys(tmp_path / "none", tokenizer.vocab) is None


def test_novelty_compares_in_the_key_the_model_was_trained_in(tokenizer):
    keys = KeyShift(tokenizer.vocab)
    pieces = [major_piece(tokenizer.vocab, 2), major_piece(tokenizer.vocab, 7)]
    assert as_trained(pieces, None) is pieces
    seen = as_trained(pieces, keys)
    for _ in range(2):  # re-iterable: novelty passes over the training pieces several times
        assert [keys.shift_of(p) for p in seen] == [0, 0]


def test_composer_token_sequence_starts_in_the_module_forward(tokenizer, monkeypatch):
    """Unprimed sampling feeds BOS alone first: the module forward must take it (it adds the
    composer position), never `decode_step` at position 0."""
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=len(tokenizer.vocab), context=64, composer_token=True)).eval()
    starts = []
    decode = model.decode_step

    def spy(ids, composer, cache):
        starts.append(cache.pos)
        return decode(ids, composer, cache)

    monkeypatch.setattr(model, "decode_step", spy)
    generate(model, tokenizer, 3, cfg=SampleConfig(max_tokens=8, seed=7, guidance=2.0))
    assert starts and min(starts) > 0
