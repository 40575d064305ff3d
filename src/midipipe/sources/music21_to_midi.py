"""A music21 score as MIDI bytes, written with symusic.

music21's own MIDI writer spends most of its time deep-copying streams (stripTies, channel
assignment): 20-40 s for one quartet movement. Reading notes, ties, dynamics, tempi and meters
straight from the flattened parts gives the same notes in a fraction of that, and the output
depends only on the score, so the bytes (and their md5, the piece id) are the same every run.
"""

from __future__ import annotations

import logging

import symusic
from music21 import chord, dynamics, key, meter, note, stream, tempo

log = logging.getLogger(__name__)

TICKS_PER_QUARTER = 480  # divisible by 3 and 5: triplets and quintuplets land on whole ticks
DEFAULT_VELOCITY = 80
DEFAULT_QPM = 120.0


def expand_repeats(score: stream.Score) -> stream.Score:
    """Repeats written out, as a listener hears them; the score as it is when they are malformed."""
    try:
        return score.expandRepeats()
    except Exception as error:  # music21 raises several kinds for badly formed repeats
        log.debug("repeats not expanded: %s", error)
        return score


def score_to_midi(score: stream.Score) -> bytes:
    out = symusic.Score(TICKS_PER_QUARTER)
    parts = list(score.parts) or [score]
    flats = [part.flatten() for part in parts]
    _add_meters_and_keys(out, flats[0])
    _add_tempi(out, flats)
    for part, flat in zip(parts, flats, strict=True):
        track = _track(part, flat)
        if len(track.notes):
            out.tracks.append(track)
    return out.dumps_midi()


def _ticks(quarter_length) -> int:
    return round(float(quarter_length) * TICKS_PER_QUARTER)


def _add_meters_and_keys(out: symusic.Score, flat: stream.Stream) -> None:
    seen: set[int] = set()
    for ts in flat.getElementsByClass(meter.TimeSignature):
        time = _ticks(ts.offset)
        if time not in seen:
            seen.add(time)
            out.time_signatures.append(symusic.TimeSignature(time, ts.numerator, ts.denominator))
    if not seen:
        out.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    seen.clear()
    for ks in flat.getElementsByClass(key.KeySignature):
        time = _ticks(ks.offset)
        if time not in seen and -7 <= ks.sharps <= 7:
            seen.add(time)
            minor = isinstance(ks, key.Key) and ks.mode == "minor"
            out.key_signatures.append(symusic.KeySignature(time, ks.sharps, int(minor)))


def _add_tempi(out: symusic.Score, flats: list[stream.Stream]) -> None:
    by_time: dict[int, float] = {}
    for flat in flats:  # the first part's mark wins where parts disagree
        for mark in flat.getElementsByClass(tempo.MetronomeMark):
            qpm = mark.getQuarterBPM()
            if qpm and qpm > 0:
                by_time.setdefault(_ticks(mark.offset), float(qpm))
    if 0 not in by_time:
        by_time[0] = DEFAULT_QPM
    for time in sorted(by_time):
        out.tempos.append(symusic.Tempo(time, by_time[time]))


def _track(part: stream.Stream, flat: stream.Stream) -> symusic.Track:
    instrument = part.getInstrument(returnDefault=True)
    program = instrument.midiProgram if instrument.midiProgram is not None else 0
    track = symusic.Track(name=part.partName or "", program=int(program) % 128)
    notes = []  # [start, end, pitch, velocity]
    tied: dict[int, list] = {}  # pitch -> the note a tie continues
    velocity = DEFAULT_VELOCITY
    for element in flat:
        if isinstance(element, dynamics.Dynamic):
            if element.volumeScalar is not None:
                velocity = min(127, max(1, round(element.volumeScalar * 127)))
            continue
        if not isinstance(element, note.Note | chord.Chord):
            continue  # rests, unpitched percussion, text, clefs...
        length = _ticks(element.quarterLength)
        if length <= 0:
            continue  # grace notes carry no duration in the score
        start = _ticks(element.offset)
        members = element.notes if isinstance(element, chord.Chord) else (element,)
        for member in members:
            pitch = member.pitch.midi
            if not 0 <= pitch <= 127:
                continue
            tie = member.tie or element.tie
            kind = tie.type if tie is not None else None
            if kind in ("continue", "stop") and pitch in tied:
                tied[pitch][1] = start + length
                if kind == "stop":
                    del tied[pitch]
                continue
            current = [start, start + length, pitch, velocity]
            notes.append(current)
            if kind in ("start", "continue"):
                tied[pitch] = current
            else:
                tied.pop(pitch, None)
    for start, end, pitch, vel in notes:
        track.notes.append(symusic.Note(start, end - start, pitch, vel))
    return track
