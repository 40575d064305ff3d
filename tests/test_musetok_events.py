"""MuseTok MIDI -> events: bit-exact against the reference vectors, plus hand-derived cases."""

from __future__ import annotations

import json
import pickle

import pytest
import symusic
from conftest import build_midi

from midipipe.musetok.events import (
    MuseTokReject,
    bar_positions,
    encode_midi,
    events_to_ids,
    midi_to_events,
    score_to_events,
)
from midipipe.musetok.vocab import EVENT_TO_ID, ID_TO_EVENT, PAD_ID, VOCAB_SIZE

TS44 = "Time_Signature_4/4"


def midi(notes, tpq=480, ts=(4, 4), tracks=None) -> bytes:
    """MIDI bytes from (start, duration, pitch) notes (in ticks of `tpq`), one piano track."""
    score = symusic.Score(tpq)
    if ts:
        score.time_signatures.append(symusic.TimeSignature(0, *ts))
    for group in tracks or [notes]:
        track = symusic.Track(program=0)
        for start, dur, pitch in group:
            track.notes.append(symusic.Note(start, dur, pitch, 80))
        score.tracks.append(track)
    return score.dumps_midi()


def note(beat: int, pitch: int, dur: int) -> list[str]:
    return [f"Beat_{beat}", f"Note_Pitch_{pitch}", f"Note_Duration_{dur}"]


# --------------------------------------------------------------------------- reference vectors


def _vector_cases(root):
    files = sorted((root / "midi").glob("*.mid"))
    assert files, f"no MIDI files under {root / 'midi'}"
    for path in files:
        yield path, json.loads((root / "events" / f"{path.stem}.json").read_text())


def test_vectors_events_bars_and_ids(musetok_vectors):
    """Every vector file: same events, bar positions and ids, or the same rejection."""
    failures = []
    for path, ref in _vector_cases(musetok_vectors):
        if "error" in ref:
            with pytest.raises(MuseTokReject):
                midi_to_events(path)
            with pytest.raises(MuseTokReject):
                encode_midi(path.read_bytes())
            continue
        events = midi_to_events(path)
        if events != ref["events"]:
            failures.append(f"{path.stem}: events differ")
            continue
        if bar_positions(events) != ref["bar_positions"]:
            failures.append(f"{path.stem}: bar positions differ")
        if ref["ids"] is None:
            missing = ref["ids_error"].split("'")[1]  # "KeyError: 'Time_Signature_1/4'"
            with pytest.raises(MuseTokReject, match=missing):
                events_to_ids(events)
            with pytest.raises(MuseTokReject):
                encode_midi(path)
        else:
            ids, bars = encode_midi(path.read_bytes())
            if ids != ref["ids"] or bars != ref["bar_positions"]:
                failures.append(f"{path.stem}: ids or bar starts differ")
    assert not failures, failures


def test_vectors_score_input_matches(musetok_vectors):
    """A symusic Score converts like its file (files whose equal notes sit in one MIDI track,
    like the type-0 multitrack vector, need the raw bytes: see score_to_events)."""
    for path, ref in _vector_cases(musetok_vectors):
        if "events" in ref and path.stem.startswith(("nottingham", "music21", "vgmidi")):
            assert score_to_events(symusic.Score(path)) == ref["events"], path.stem


def test_vocab_equals_reference_dictionary(musetok_vectors):
    ref = json.loads((musetok_vectors / "vocab.json").read_text())
    assert list(ref["event_to_id"].items()) == list(EVENT_TO_ID.items())
    assert PAD_ID == ref["pad_id"] == 167
    assert VOCAB_SIZE == ref["vocab_size_including_pad"] == 168


# --------------------------------------------------------------------------- vocabulary


def test_vocab_shape_without_vectors():
    assert len(EVENT_TO_ID) == 167 and list(ID_TO_EVENT) == sorted(ID_TO_EVENT)
    assert [EVENT_TO_ID[e] for e in ("Bar_None", "EOS_None", TS44)] == [0, 54, 162]
    assert (PAD_ID, VOCAB_SIZE) == (167, 168)
    assert all(ID_TO_EVENT[i] == e for e, i in EVENT_TO_ID.items())


# --------------------------------------------------------------------------- hand-made files


def test_simple_4_4_by_hand():
    """build_midi: 4 quarter notes per bar over a held bass note, 2 bars."""
    events = midi_to_events(build_midi(n_bars=2))
    expected = []
    for b in range(2):
        expected.append("Bar_None")
        expected += note(0, 60 + b, 480) + note(0, 36 + b, 1920)  # higher pitch first
        for k in range(1, 4):
            expected += note(12 * k, 60 + b + k, 480)
        expected.append(TS44)
    expected.append("EOS_None")
    assert events == expected
    ids, bars = encode_midi(build_midi(n_bars=2))
    assert bars == [0, 17] == bar_positions(events)
    assert ids == [EVENT_TO_ID[e] for e in events]


@pytest.mark.parametrize("tpq", [96, 384, 1024])
def test_other_resolutions_rescale_to_480(tpq):
    assert midi_to_events(build_midi(tpq=tpq)) == midi_to_events(build_midi(tpq=480))


def test_rescale_truncates():
    """1024 tpq, onset 130 -> 130/1024*480 = 60.9 -> 60 (not 61): ties to 0 on the 120 grid."""
    events = midi_to_events(midi([(130, 1024, 60)], tpq=1024))
    assert events == ["Bar_None", *note(0, 60, 480), TS44, "EOS_None"]


def test_triplets_and_lone_80_grid_onset():
    """0/160/320 form a 3-note triplet (step 160); a lone onset at 80 snaps to 120."""
    trip = midi([(0, 160, 60), (160, 160, 62), (320, 160, 64), (1040, 240, 65)])
    assert midi_to_events(trip) == [
        "Bar_None", *note(0, 60, 160), *note(4, 62, 160), *note(8, 64, 160),
        *note(27, 65, 240), TS44, "EOS_None",
    ]  # fmt: skip
    lone = midi([(0, 480, 60), (80, 480, 62)])
    assert midi_to_events(lone) == [
        "Bar_None",
        *note(0, 60, 480),
        *note(3, 62, 480),
        TS44,
        "EOS_None",
    ]


def test_onset_inside_a_triplet_adds_no_pattern_of_its_own():
    """0,80,160 are a triplet; 80 is already part of it, so its own pattern (160, 240) is not
    added and 240 stays a plain note (duration 160 snaps to 120, not to the triplet 160)."""
    events = midi_to_events(midi([(0, 80, 60), (80, 80, 62), (160, 80, 64), (240, 160, 65)]))
    assert events == [
        "Bar_None", *note(0, 60, 80), *note(2, 62, 80), *note(4, 64, 80), *note(6, 65, 120),
        TS44, "EOS_None",
    ]  # fmt: skip


def test_overlap_is_cut_at_next_onset_group():
    """A (0, 960) overlaps B (480, 960): cut to 480. B reaches the last group: never cut."""
    events = midi_to_events(midi([(0, 960, 60), (480, 960, 64), (1920, 480, 67)]))
    assert events == [
        "Bar_None", *note(0, 60, 480), *note(12, 64, 960), TS44,
        "Bar_None", *note(0, 67, 480), TS44, "EOS_None",
    ]  # fmt: skip


def test_leading_empty_bars_dropped_and_default_time_signature():
    events = midi_to_events(midi([(3 * 1920 + 480, 480, 60)], ts=None))
    assert events == ["Bar_None", *note(12, 60, 480), TS44, "EOS_None"]


def test_equal_notes_on_separate_tracks_keep_track_order():
    one = [(0, 480, 60)]
    two = [(0, 960, 60)]
    events = midi_to_events(midi(None, tracks=[one, two]))
    assert events[1:7] == [*note(0, 60, 480), *note(0, 60, 960)]


def raw_midi(track: bytes, tpq: int = 480) -> bytes:
    """A format-0 MIDI file around one track body (events with one-byte delta times)."""
    body = track + b"\x00\xff\x2f\x00"
    head = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    return head + tpq.to_bytes(2, "big") + b"MTrk" + len(body).to_bytes(4, "big") + body


def test_equal_notes_in_one_midi_track_follow_first_note_off():
    """One MIDI track, channels 1 and 0 both start pitch 60 at 0. miditoolkit orders its
    instruments by first note-off (channel 1 at 480), symusic by channel; the reference wins."""
    track = (
        b"\x00\x91\x3c\x50"  # ch1 on
        b"\x00\x90\x3c\x50"  # ch0 on
        b"\x83\x60\x81\x3c\x00"  # +480 ch1 off
        b"\x83\x60\x80\x3c\x00"  # +480 ch0 off
    )
    events = midi_to_events(raw_midi(track))
    assert events == ["Bar_None", *note(0, 60, 480), *note(0, 60, 960), TS44, "EOS_None"]


def test_empty_score_rejected():
    with pytest.raises(MuseTokReject, match="empty MIDI"):
        midi_to_events(symusic.Score(480).dumps_midi())
    with pytest.raises(MuseTokReject, match="empty MIDI"):
        score_to_events(symusic.Score(480))


def test_pitch_109_rejected():
    with pytest.raises(MuseTokReject, match="invalid pitch value 109"):
        encode_midi(build_midi(pitch=109))


def test_five_four_converts_but_has_no_ids():
    events = midi_to_events(build_midi(numerator=5))
    assert events[-2:] == ["Time_Signature_5/4", "EOS_None"]
    with pytest.raises(MuseTokReject, match="Time_Signature_5/4"):
        events_to_ids(events)
    with pytest.raises(MuseTokReject, match="not in the MuseTok vocabulary"):
        encode_midi(build_midi(numerator=5))


@pytest.mark.parametrize(
    "data",
    [b"", b"MThd", b"MThd\x00\x00\x00\x06" + bytes(range(60)), b"MThd" + bytes(range(200))],
)
def test_unparsable_bytes_rejected(data, tmp_path):
    with pytest.raises(MuseTokReject, match="cannot parse MIDI"):
        encode_midi(data)
    path = tmp_path / "bad.mid"
    path.write_bytes(data)
    with pytest.raises(MuseTokReject, match="cannot parse MIDI"):
        encode_midi(path)


def test_path_bytes_and_score_agree(make_midi):
    path = make_midi(n_bars=3, numerator=3)
    events = midi_to_events(path)
    assert events == midi_to_events(path.read_bytes()) == midi_to_events(str(path))
    assert events == score_to_events(symusic.Score(path))
    assert events == score_to_events(symusic.Score(path).to("quarter"))


def test_encode_midi_is_picklable_and_rejects_pickle():
    assert pickle.loads(pickle.dumps(encode_midi)) is encode_midi
    err = pickle.loads(pickle.dumps(MuseTokReject("invalid pitch value 109")))
    assert isinstance(err, MuseTokReject) and str(err) == "invalid pitch value 109"
