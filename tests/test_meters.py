"""No good file lost: meters outside a vocabulary are mapped and counted, never rejected."""

from collections import Counter

import pyarrow.parquet as pq
import pytest
import symusic

from midipipe.core.params import TokenizeParams
from midipipe.data.meters import map_meter, map_score_meters
from midipipe.data.sources.base import find_midis
from midipipe.musetok.events import Fixes, MuseTokReject, encode_midi
from midipipe.tokens import fast_remi, remi
from midipipe.tokens.tokenize import tokenize_files
from tests.conftest import build_midi

REMI_METERS = set(remi.make_tokenizer().time_signatures)


@pytest.mark.parametrize(
    ("meter", "expected", "rule"),
    [
        ((4, 4), (4, 4), "same"),
        ((14, 16), (7, 8), "same"),  # same bar length
        ((10, 4), (5, 2), "same"),
        ((15, 8), (5, 8), "split"),  # three 5/8 bars per 15/8 bar
        ((65, 4), (5, 4), "split"),  # an ASAP cadenza bar: thirteen 5/4 bars
        ((1, 16), (1, 8), "merge"),  # one 1/8 bar per two 1/16 bars
        ((13, 16), (6, 8), "nearest"),  # no whole number of eighths: nearest length
    ],
)
def test_map_meter_rules(meter, expected, rule):
    assert map_meter(meter, REMI_METERS) == (expected, rule)


def _with_rare_bars() -> symusic.Score:
    """Four bars of 4/4, two of 13/16 (1560 ticks each at 480 tpq), then 4/4 again."""
    score = symusic.Score.from_midi(build_midi(n_bars=8))
    score.time_signatures.append(symusic.TimeSignature(4 * 1920, 13, 16))
    score.time_signatures.append(symusic.TimeSignature(4 * 1920 + 2 * 1560, 4, 4))
    return score


def test_rare_bars_are_mapped_counted_and_match_miditok():
    score = _with_rare_bars()
    mapped, bars = map_score_meters(score, REMI_METERS)
    assert bars == {"13/16": 2}
    assert [(t.numerator, t.denominator) for t in mapped.time_signatures] == [
        (4, 4),
        (6, 8),
        (4, 4),
    ]
    assert (13, 16) in {(t.numerator, t.denominator) for t in score.time_signatures}  # untouched
    tok = remi.make_tokenizer()
    assert fast_remi.encode_ids(tok, mapped) == tok.encode(mapped).ids
    counted = Counter()
    ids, bar_starts = remi.encode(tok, score, counted)
    assert counted == {"13/16": 2}
    assert "TimeSig_6/8" in {tok[int(i)] for i in ids}
    assert len(bar_starts) >= 8


def test_musetok_maps_meter_folds_pitches_or_rejects_as_the_reference():
    data = build_midi(n_bars=3, numerator=5, pitch=110)  # 5/4, pitches above 108
    with pytest.raises(MuseTokReject):
        encode_midi(data)  # the reference conversion rejects it
    fixes = Fixes()
    ids, bars = encode_midi(data, fixes)
    assert ids and len(bars) >= 3
    assert fixes.meter == "5/4" and fixes.bars == len(bars) and fixes.folded_notes > 0


def test_tokenize_keeps_rare_meters_and_counts_them(tmp_path):
    files = {"rare.mid": _with_rare_bars().dumps_midi(), "empty.mid": b""}
    items = []
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        items.append((f"{i:032x}", str(tmp_path / name)))
    summary = tokenize_files(items, tmp_path / "t", TokenizeParams(workers=1))
    rejects = pq.read_table(tmp_path / "t" / "rejects.parquet").to_pylist()
    assert {r["path"] for r in rejects} == {str(tmp_path / "empty.mid")}
    assert all(r["reason"] == "empty file (0 bytes)" for r in rejects)
    metrics = summary.metrics()
    assert metrics["remi_pieces"] == metrics["musetok_pieces"] == 1
    assert metrics["remi_remapped_pieces"] == 1
    assert metrics["remi_remapped_bars"] == metrics["remi_remapped_bars_13_16"] == 2
    assert metrics["musetok_remapped_pieces"] == 0  # MuseTok reads only the first meter


# ASAP scores with bars in 13/16, 13/8 and 10/4, rejected whole before meters were mapped.
RARE_METER_FILES = (
    "asap/Chopin/Sonata_2/2nd/midi_score.mid",
    "asap/Beethoven/Piano_Sonatas/24-2/midi_score.mid",
    "asap/Liszt/Transcendental_Etudes/11/midi_score.mid",
)


def test_real_rare_meter_pieces_are_kept(external_data, tmp_path):
    items = [(f"{i:032x}", str(external_data / f)) for i, f in enumerate(RARE_METER_FILES)]
    summary = tokenize_files(items, tmp_path / "t", TokenizeParams(workers=1))
    assert summary.rejects == 0
    assert summary.remi_pieces == summary.musetok_pieces == len(items)
    metrics = summary.metrics()
    assert metrics["remi_remapped_pieces"] == len(items)
    for meter in ("13_16", "13_8", "10_4"):
        assert metrics[f"remi_remapped_bars_{meter}"] > 0


@pytest.mark.slow
def test_every_shared_file_that_parses_is_kept(external_data, tmp_path):
    """Every file of ../shared/datasets: only the unparsable or note-less ones are rejects
    (MidiTok's corrupted file and empty.mid). ~75 s on 2 cores."""
    files = [f for d in sorted(external_data.iterdir()) if d.is_dir() for f in find_midis(d)]
    items = [(f"{i:032x}", str(f)) for i, f in enumerate(files)]
    summary = tokenize_files(items, tmp_path / "t", TokenizeParams(workers=2))
    rejects = pq.read_table(tmp_path / "t" / "rejects.parquet").to_pylist()
    for r in rejects:
        assert r["reason"].startswith(("cannot parse MIDI", "no notes", "empty file")), r
    assert {r["path"] for r in rejects} <= {
        str(external_data / "miditok-tests" / "corrupted" / "ValueError_Control168.mid"),
        str(external_data / "miditok-tests" / "one_track" / "empty.mid"),
    }
    assert summary.remi_pieces == summary.musetok_pieces == len(files) - len(rejects) // 2
