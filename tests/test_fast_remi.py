"""fast_remi must give miditok's ids exactly: on built scores with meter and tempo changes,
drums and several programs, and on real files from every external set."""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from midipipe.tokens import fast_remi, remi


def _score(changes: list[tuple[int, int, int]], tempos: list[tuple[int, float]]) -> symusic.Score:
    """Three tracks (piano, strings, drums) over meter and tempo changes, with odd durations."""
    tpq = 480
    score = symusic.Score(tpq)
    for time, num, den in changes:
        score.time_signatures.append(symusic.TimeSignature(time, num, den))
    for time, qpm in tempos:
        score.tempos.append(symusic.Tempo(time, qpm))
    piano = symusic.Track(name="piano", program=0)
    strings = symusic.Track(name="strings", program=48)
    drums = symusic.Track(name="drums", program=0, is_drum=True)
    for k in range(96):
        t = k * tpq // 2 + (k % 3) * 7  # off-grid onsets get quantized
        piano.notes.append(symusic.Note(t, tpq // 2 + (k % 5) * 31, 48 + k % 30, 40 + k % 80))
        if k % 4 == 0:
            strings.notes.append(symusic.Note(t, 3 * tpq + k, 60 + k % 12, 90))
            drums.notes.append(symusic.Note(t, tpq // 8, 36 + k % 10, 100))
    score.tracks.extend([piano, strings, drums])
    return score


@pytest.mark.parametrize(
    "changes, tempos",
    [
        ([(0, 4, 4)], [(0, 120.0)]),
        ([(0, 5, 4), (4800, 7, 8), (9000, 3, 4)], [(0, 90.0), (6000, 143.0)]),
        ([(960, 6, 8)], []),  # first meter after tick 0: miditok inserts 4/4 before it
        ([(0, 3, 4), (1000, 2, 4)], [(0, 60.0), (1000, 200.0), (1000, 180.0)]),  # mid-bar
    ],
)
def test_built_scores_match_miditok(changes, tempos):
    tokenizer = remi.make_tokenizer()
    assert fast_remi.supports(tokenizer)
    score = _score(changes, tempos)
    assert fast_remi.encode_ids(tokenizer, score.copy()) == tokenizer.encode(score.copy()).ids


def test_other_configs_fall_back_to_miditok():
    tokenizer = remi.make_tokenizer({"use_rests": True})
    assert not fast_remi.supports(tokenizer)
    score = _score([(0, 4, 4)], [(0, 120.0)])
    ids, _ = remi.encode(tokenizer, score.copy())
    assert ids.tolist() == tokenizer.encode(score.copy()).ids


def test_real_files_match_miditok(external_data: Path):
    tokenizer = remi.make_tokenizer()
    files = []
    for name, step in (("pop909", 30), ("nottingham", 40), ("vgmidi", 20), ("miditok-tests", 1)):
        found = sorted((external_data / name).rglob("*.mid")) + sorted(
            (external_data / name).rglob("*.midi")
        )
        files += found[::step]
    compared = 0
    for f in files:
        try:
            score = symusic.Score(f)
            expected = tokenizer.encode(score.copy()).ids
        except Exception:  # files miditok itself cannot read are the rejects tests' business
            continue
        assert fast_remi.encode_ids(tokenizer, score.copy()) == expected, f
        compared += 1
    assert compared > 100
