"""A music21 score as MIDI bytes, written with symusic.

music21's own MIDI writer spends most of its time deep-copying streams (stripTies, repeat
expansion, channel assignment): 20-40 s for one quartet movement. Here notes, ties, dynamics,
tempi, meters and keys are read straight from the flattened parts, and repeats are expanded
on a *skeleton* (one empty measure per measure, carrying only repeat barlines, voltas and
D.C./segno marks): music21's `Expander` gives the order in which measures are played, and the
events of each measure are copied to every place it is played. Same notes, a fraction of the
time. The output depends only on the score, so the bytes (and their md5, the piece id) are the
same every run.
"""

from __future__ import annotations

import copy
import logging
from bisect import bisect_right
from collections import defaultdict

import symusic
from music21 import bar, chord, dynamics, key, meter, note, repeat, spanner, stream, tempo

log = logging.getLogger(__name__)

TICKS_PER_QUARTER = 480  # divisible by 3 and 5: triplets and quintuplets land on whole ticks
DEFAULT_VELOCITY = 80
DEFAULT_QPM = 120.0


def score_to_midi(score: stream.Score, expand_repeats: bool = True) -> bytes:
    parts = list(score.parts) or [score]
    flats = [part.flatten() for part in parts]
    timeline = _Timeline.of(score, parts[0]) if expand_repeats else None
    out = symusic.Score(TICKS_PER_QUARTER)
    _add_meters_and_keys(out, flats[0], timeline)
    _add_tempi(out, flats, timeline)
    for part, flat in zip(parts, flats, strict=True):
        track = _track(part, flat, timeline)
        if len(track.notes):
            out.tracks.append(track)
    return out.dumps_midi()


def _ticks(quarter_length) -> int:
    return round(float(quarter_length) * TICKS_PER_QUARTER)


class _Timeline:
    """Where each source tick is played once repeats are written out (possibly several times,
    or never: measures after a Fine)."""

    def __init__(self, starts: list[int], lengths: list[int], order: list[int]):
        self.starts = starts
        self.targets: dict[int, list[int]] = defaultdict(list)
        time = starts[0]
        for index in order:
            self.targets[index].append(time)
            time += lengths[index]

    def place(self, tick: int) -> list[int]:
        index = max(0, bisect_right(self.starts, tick) - 1)
        return [target + tick - self.starts[index] for target in self.targets.get(index, ())]

    @classmethod
    def of(cls, score: stream.Score, part: stream.Stream) -> _Timeline | None:
        """The played order of `part`'s measures; None when there is nothing to expand."""
        measures = list(part.getElementsByClass(stream.Measure))
        if not measures:
            return None
        try:
            order = _played_measures(score, measures)
        except Exception as error:  # badly formed repeats: play the score as written
            log.debug("repeats not expanded: %s", error)
            return None
        if order is None or order == list(range(len(measures))):
            return None
        starts = [_ticks(part.elementOffset(m)) for m in measures]
        lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        lengths.append(_ticks(measures[-1].duration.quarterLength))
        return cls(starts, lengths, order)


def _played_measures(score: stream.Score, measures: list[stream.Measure]) -> list[int] | None:
    skeleton = stream.Part()
    twins: dict[int, stream.Measure] = {}
    marked = False
    for index, measure in enumerate(measures):
        twin = stream.Measure(number=measure.number)
        twin.id = f"m{index}"  # survives the Expander's copies: maps back to the source measure
        for side in ("leftBarline", "rightBarline"):
            line = getattr(measure, side)
            if isinstance(line, bar.Repeat):
                setattr(twin, side, bar.Repeat(direction=line.direction, times=line.times))
                marked = True
        for mark in measure.getElementsByClass(repeat.RepeatExpression):
            twin.insert(measure.elementOffset(mark), copy.deepcopy(mark))
            marked = True
        length = measure.duration.quarterLength
        if length > 0:
            twin.insert(0, note.Rest(quarterLength=length))
        skeleton.append(twin)
        twins[id(measure)] = twin
    for bracket in score.recurse().getElementsByClass(spanner.RepeatBracket):
        members = [twins[id(m)] for m in bracket.getSpannedElements() if id(m) in twins]
        if members:
            skeleton.insert(0, spanner.RepeatBracket(members, number=bracket.number))
            marked = True
    if not marked:
        return None
    expanded = repeat.Expander(skeleton).process(deepcopy=False)
    return [int(m.id[1:]) for m in expanded.getElementsByClass(stream.Measure)]


def _placed(tick: int, timeline: _Timeline | None) -> list[int]:
    return [tick] if timeline is None else timeline.place(tick)


def _add_meters_and_keys(
    out: symusic.Score, flat: stream.Stream, timeline: _Timeline | None
) -> None:
    meters: dict[int, tuple[int, int]] = {}
    for ts in flat.getElementsByClass(meter.TimeSignature):
        for time in _placed(_ticks(ts.offset), timeline):
            meters.setdefault(time, (ts.numerator, ts.denominator))
    if not meters:
        meters[0] = (4, 4)
    for time in sorted(meters):
        out.time_signatures.append(symusic.TimeSignature(time, *meters[time]))
    keys: dict[int, tuple[int, int]] = {}
    for ks in flat.getElementsByClass(key.KeySignature):
        if -7 <= ks.sharps <= 7:
            minor = int(isinstance(ks, key.Key) and ks.mode == "minor")
            for time in _placed(_ticks(ks.offset), timeline):
                keys.setdefault(time, (ks.sharps, minor))
    for time in sorted(keys):
        out.key_signatures.append(symusic.KeySignature(time, *keys[time]))


def _add_tempi(out: symusic.Score, flats: list[stream.Stream], timeline: _Timeline | None) -> None:
    by_time: dict[int, float] = {}
    for flat in flats:  # the first part's mark wins where parts disagree
        for mark in flat.getElementsByClass(tempo.MetronomeMark):
            qpm = mark.getQuarterBPM()
            if qpm and qpm > 0:
                for time in _placed(_ticks(mark.offset), timeline):
                    by_time.setdefault(time, float(qpm))
    if not by_time or min(by_time) > 0:
        by_time.setdefault(0, DEFAULT_QPM)
    for time in sorted(by_time):
        out.tempos.append(symusic.Tempo(time, by_time[time]))


def _track(part: stream.Stream, flat: stream.Stream, timeline: _Timeline | None) -> symusic.Track:
    instrument = part.getInstrument(returnDefault=True)
    program = instrument.midiProgram if instrument.midiProgram is not None else 0
    track = symusic.Track(name=part.partName or "", program=int(program) % 128)
    events = []  # (start, order, length, pitch, velocity, tie type), in played order
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
        members = element.notes if isinstance(element, chord.Chord) else (element,)
        for member in members:
            pitch = member.pitch.midi
            if not 0 <= pitch <= 127:
                continue
            tie = member.tie or element.tie
            kind = tie.type if tie is not None else None
            for start in _placed(_ticks(element.offset), timeline):
                events.append((start, len(events), length, pitch, velocity, kind))
    for start, end, pitch, vel in _merge_ties(sorted(events)):
        track.notes.append(symusic.Note(start, end - start, pitch, vel))
    return track


def _merge_ties(events) -> list[list[int]]:
    """Tied notes as one note: a 'continue' or 'stop' extends the open note of its pitch."""
    notes: list[list[int]] = []  # [start, end, pitch, velocity]
    tied: dict[int, list[int]] = {}  # pitch -> the note a tie continues
    for start, _, length, pitch, velocity, kind in events:
        if kind in ("continue", "stop") and pitch in tied and start <= tied[pitch][1]:
            tied[pitch][1] = max(tied[pitch][1], start + length)
            if kind == "stop":
                del tied[pitch]
            continue
        current = [start, start + length, pitch, velocity]
        notes.append(current)
        if kind in ("start", "continue"):
            tied[pitch] = current
        else:
            tied.pop(pitch, None)
    return notes
