"""Chord qualities (`emotion.harmony`): the hand-crafted quadrant model's valence cues."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from midipipe.emotion import harmony, quadrant, rules


def _chords(*chords: tuple[int, ...], beats: int = 4, drums: bool = False) -> symusic.Score:
    """Each chord held for `beats` quarter notes, one after the other."""
    score = symusic.Score(480)
    track = symusic.Track(name="t", program=0, is_drum=drums)
    for k, pitches in enumerate(chords):
        for p in pitches:
            track.notes.append(symusic.Note(k * beats * 480, beats * 480, p, 80))
    score.tracks.append(track)
    return score


def _feature(score: symusic.Score, name: str) -> float:
    return float(harmony.harmony_features(score)[harmony.HARMONY.index(name)])


def test_beat_chroma_weights_each_note_by_the_time_it_sounds_in_the_beat():
    score = symusic.Score(480)
    track = symusic.Track(name="t", program=0)
    track.notes.append(symusic.Note(240, 480, 62, 80))  # D from beat 0.5 to 1.5
    track.notes.append(symusic.Note(0, 960, 64, 80))  # E over beats 0-1
    score.tracks.append(track)
    chroma = harmony.beat_chroma(score)
    assert chroma.shape == (2, 12)
    np.testing.assert_allclose(chroma[:, 2], [0.5, 0.5])
    np.testing.assert_allclose(chroma[:, 4], [1.0, 1.0])
    assert chroma.sum() == pytest.approx(3.0)


def test_major_minor_and_dissonant_chords_are_told_apart():
    major = _chords((60, 64, 67), (65, 69, 72))  # C, F
    minor = _chords((57, 60, 64), (62, 65, 69))  # Am, Dm
    assert _feature(major, "chord_major") == pytest.approx(1.0)
    assert _feature(minor, "chord_minor") == pytest.approx(1.0)
    assert _feature(major, "major_minor") == pytest.approx(1.0)
    assert _feature(minor, "major_minor") == pytest.approx(-1.0)
    cluster = _chords((60, 61, 66))  # minor second and tritones
    assert _feature(cluster, "dissonance") > _feature(major, "dissonance") == 0.0
    assert _feature(major, "chord_changes") == pytest.approx(1 / 7)  # 8 beats, one change
    got = harmony.harmony_features(major)
    assert got.shape == (len(harmony.HARMONY),)
    assert got[: len(harmony.QUALITIES)].sum() == pytest.approx(1.0)


def test_a_bare_third_is_neither_major_nor_minor():
    thirds = _chords((57, 60), (64, 67), (62, 65))  # A-C, E-G, D-F: a minor key's thirds
    assert _feature(thirds, "chord_minor_third") + _feature(thirds, "chord_major_third") == (
        pytest.approx(1.0)
    )
    assert _feature(thirds, "major_minor") == 0.0  # before: +1, every third taken for major


def test_a_piece_without_pitched_notes_gives_zeros():
    drums = _chords((36, 38), drums=True)
    assert not harmony.harmony_features(drums).any()
    assert not harmony.harmony_features(symusic.Score(480)).any()


def test_handcrafted_row_is_the_named_features_in_order():
    score = _chords((60, 64, 67), (57, 60, 64))
    cues = rules.bar_cues(score, rules.bar_grid(score))
    row = quadrant.handcrafted_row(score, cues)
    assert row.shape == (len(quadrant.HANDCRAFTED),)
    np.testing.assert_allclose(row[-len(harmony.HARMONY) :], harmony.harmony_features(score))
    music = [score.dumps_midi(), b"not midi"]
    offsets = np.array([0, len(cues), 2 * len(cues)])
    got = quadrant.handcrafted_matrix(music, np.concatenate([cues, cues]), offsets)
    np.testing.assert_allclose(got[0], row, rtol=1e-5, atol=1e-6)
    summary = slice(
        len(quadrant.HANDCRAFTED) - len(harmony.HARMONY) - len(quadrant.CUE_SUMMARY),
        -len(harmony.HARMONY),
    )
    np.testing.assert_allclose(got[1, summary], quadrant.cue_summary(cues), rtol=1e-5)
    assert not got[1, -len(harmony.HARMONY) :].any()  # unreadable: zeros, the summary kept


def test_a_stray_far_note_and_a_very_long_note_cost_little():
    score = _chords((60, 64, 67))
    track = score.tracks[0]
    track.notes.append(symusic.Note(2_000_000_000, 480, 62, 80))  # a stray note, ~4M beats on
    track.notes.append(symusic.Note(0, 1_000_000_000, 49, 80))  # C#, held for ~2M beats
    chroma = harmony.beat_chroma(score)
    # the occupied beats only: the capped held note's, and the two the stray note straddles
    assert chroma.shape == (harmony.MAX_BEATS_A_NOTE + 2, 12)
    assert chroma[:, 1].sum() == pytest.approx(harmony.MAX_BEATS_A_NOTE)  # capped
