"""Example pieces the demo writes itself, so the page works before anyone uploads: one
bright (major, fast, loud, 4/4) and one dark (minor, slow, soft, 3/4), for contrasting
valence/arousal curves."""

from __future__ import annotations

from pathlib import Path

import symusic

# (file, tempo, meter, tonic, scale steps, velocity)
PIECES = (
    ("example_bright_major_4-4.mid", 144.0, 4, 60, (0, 2, 4, 5, 7, 9, 11), 100),
    ("example_dark_minor_3-4.mid", 60.0, 3, 57, (0, 2, 3, 5, 7, 8, 10), 50),
)
BARS = 16
TPQ = 480
PROGRESSION = (0, 5, 3, 4)  # scale degrees of the bass, one per bar: I vi IV V


def example_score(
    tempo: float, meter: int, tonic: int, scale: tuple, velocity: int
) -> symusic.Score:
    """A melody walking the scale over a held triad per bar, on piano and strings."""
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, meter, 4))
    score.tempos.append(symusic.Tempo(0, tempo))
    melody = symusic.Track(name="melody", program=0)
    chords = symusic.Track(name="chords", program=48)
    for bar in range(BARS):
        start = bar * meter * TPQ
        root = PROGRESSION[bar % len(PROGRESSION)]
        for k in (0, 2, 4):  # the triad on the bar's degree, an octave below
            degree = root + k
            pitch = tonic - 12 + scale[degree % 7] + 12 * (degree // 7)
            chords.notes.append(symusic.Note(start, meter * TPQ, pitch, velocity - 20))
        for beat in range(meter):
            degree = (bar * 2 + beat * (1 if bar % 2 else -1)) % 10
            pitch = tonic + scale[degree % 7] + 12 * (degree // 7)
            melody.notes.append(symusic.Note(start + beat * TPQ, TPQ, pitch, velocity))
    score.tracks.extend([melody, chords])
    return score


def write_examples(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, *spec in PIECES:
        path = folder / name
        example_score(*spec).dump_midi(str(path))
        paths.append(path)
    return paths
