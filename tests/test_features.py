"""The hand-crafted baseline: musical statistics of a piece and the served logistic regression."""

from __future__ import annotations

import numpy as np
import symusic

from midipipe.evaluation import features as hf


def chord_piece(third: int, shift: int = 0, velocity: int = 80, tempo: float = 120.0):
    """Eight bars of a tonic triad (major third 4, minor 3) arpeggiated in eighths."""
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, tempo))
    track = symusic.Track(name="piano", program=0)
    pitches = [60 + shift, 60 + third + shift, 67 + shift, 72 + shift]
    for k in range(64):
        track.notes.append(symusic.Note(k * 240, 240, pitches[k % 4], velocity))
    score.tracks.append(track)
    return score


def column(name: str) -> int:
    return hf.FEATURES.index(name)


def test_features_read_mode_tempo_and_are_transposition_invariant_in_the_key_frame():
    major, minor = hf.piece_features(chord_piece(4)), hf.piece_features(chord_piece(3))
    assert len(major) == len(hf.FEATURES) and np.isfinite(major).all()
    assert major[column("mode_major_minor")] > 0 > minor[column("mode_major_minor")]
    up = hf.piece_features(chord_piece(4, shift=5))
    keyed = [column(f"pc_key_{k}") for k in range(12)]
    assert np.allclose(up[keyed], major[keyed]) and not np.allclose(
        up[[column(f"pc_{k}") for k in range(12)]], major[[column(f"pc_{k}") for k in range(12)]]
    )
    fast = hf.piece_features(chord_piece(4, tempo=240.0))
    assert fast[column("onsets_per_s")] == 2 * major[column("onsets_per_s")]
    assert fast[column("tempo_log2")] == major[column("tempo_log2")] + 1
    assert major[column("gm_family_0")] == 1.0  # all piano


def test_linear_model_serves_the_fitted_probabilities_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] > 0).astype(int) * 2  # classes 0 and 2 of three: 1 never seen
    model = hf.fit_linear(x, y, ["a", "b", "c"], c=1.0)
    probs = model.predict_proba(x)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert probs[:, 1].max() < 1e-6 and (probs.argmax(1) == y).mean() > 0.9
    model.save(tmp_path, {"task": "test"})
    again = hf.LinearModel.load(tmp_path)
    assert again.classes == ["a", "b", "c"]
    assert np.allclose(again.predict_proba(x), probs, atol=1e-5)
