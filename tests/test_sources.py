"""Corpus adapters on fixtures written in each corpus's real format (file names, CSV and JSON
columns, Parquet schema), with real MIDI bytes from `build_midi`."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import pytest
import symusic
from conftest import build_midi

from midipipe.data.sources import KINDS, SourceError, describe, iter_source
from midipipe.data.sources import music21_corpus as m21
from midipipe.data.sources.music21_catalogue import CATALOGUE, Entry, tune_type
from midipipe.data.sources.names import normalize_composer, slug


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def by_name(pieces):
    return {p.name: p for p in pieces}


# -- registry and errors ----------------------------------------------------------------------


def test_registry_lists_every_corpus():
    assert set(KINDS) == {
        "music21",
        "folder",
        "xmidi",
        "emopia",
        "vgmidi",
        "midicaps",
        "maestro",
        "gigamidi",
    }


def test_unknown_kind_names_param_value_and_known_kinds():
    with pytest.raises(SourceError) as error:
        iter_source({"kind": "midimagic", "name": "x"}, "data.sources[2]")
    message = str(error.value)
    assert "data.sources[2].kind" in message and "'midimagic'" in message
    assert "folder" in message and "gigamidi" in message


def test_unknown_option_is_named(tmp_path):
    spec = {"kind": "folder", "name": "lab", "path": str(tmp_path), "composer_form": "csv"}
    with pytest.raises(SourceError, match=r"data\.sources\[0\].*'composer_form'"):
        iter_source(spec, "data.sources[0]")


def test_missing_path_names_param_and_path(tmp_path):
    missing = tmp_path / "nowhere"
    for kind in ("folder", "xmidi", "emopia", "vgmidi", "maestro"):
        with pytest.raises(SourceError) as error:
            iter_source({"kind": kind, "name": kind, "path": str(missing)}, "data.sources[1]")
        assert "data.sources[1].path" in str(error.value) and str(missing) in str(error.value)
    spec = {"kind": "midicaps", "metadata": str(missing / "train.json"), "lmd_root": "."}
    with pytest.raises(SourceError, match=r"data\.sources\[3\]\.metadata.*nowhere"):
        iter_source(spec, "data.sources[3]")


def test_option_types_and_names_are_checked(tmp_path):
    with pytest.raises(SourceError, match=r"data\.sources\[0\]\.max_per_group.*'3'"):
        iter_source({"kind": "music21", "max_per_group": "3"}, "data.sources[0]")
    with pytest.raises(SourceError, match=r"data\.sources\[0\]\.composer_from"):
        iter_source(
            {"kind": "folder", "path": str(tmp_path), "composer_from": "x"}, "data.sources[0]"
        )
    with pytest.raises(SourceError, match=r"data\.sources\[0\]\.name"):
        iter_source({"kind": "folder", "name": "../up", "path": str(tmp_path)}, "data.sources[0]")
    with pytest.raises(SourceError, match=r"data\.sources\[0\]\.selection.*'bachh'"):
        iter_source({"kind": "music21", "selection": ["bachh"]}, "data.sources[0]")


def test_validation_happens_before_the_first_piece(tmp_path):
    """The error comes from iter_source itself, not from the first next()."""
    write(tmp_path / "a.mid", build_midi())
    write_csv(
        tmp_path / "meta.csv", ["path", "composer"], [["a.mid", "x"], ["../../etc/passwd", "y"]]
    )
    spec = {
        "kind": "folder",
        "path": str(tmp_path),
        "composer_from": "csv",
        "metadata_csv": "meta.csv",
    }
    with pytest.raises(SourceError, match="escapes its root"):
        iter_source(spec, "data.sources[0]")


def test_describe_is_one_line_with_the_options_set(tmp_path):
    line = describe(
        {"kind": "folder", "name": "lab", "path": "/data/midis", "composer_from": "csv"}
    )
    assert line.startswith("lab (folder): ") and "composer_from=csv" in line and "\n" not in line
    assert describe({"kind": "music21"}).startswith("music21 (music21): ")


def test_names():
    assert normalize_composer("Frédéric Chopin") == "chopin"
    assert normalize_composer("Bach, Johann Sebastian") == "bach"
    assert normalize_composer("Carl Philipp Emanuel Bach") == "cpe-bach"
    assert normalize_composer("Franz Schubert / Franz Liszt") == "schubert"
    assert normalize_composer("Ludwig van Beethoven") == "beethoven"
    assert normalize_composer("Anonymous") is None and normalize_composer("") is None
    assert slug("Hip Hop/Rap") == "hip-hop-rap"


# -- folder -----------------------------------------------------------------------------------


def test_folder_composer_from_subfolder(tmp_path):
    write(tmp_path / "Bach" / "a.mid", build_midi())
    write(tmp_path / "Bach" / "book 2" / "b.mid", build_midi(pitch=62))
    write(tmp_path / "Johann Sebastian Bach" / "c.MID", build_midi(pitch=64))
    write(tmp_path / "loose.mid", build_midi(pitch=65))
    write(tmp_path / "notes.txt", "not midi")
    pieces = by_name(iter_source({"kind": "folder", "name": "lab", "path": str(tmp_path)}, "p"))
    assert set(pieces) == {
        "Bach/a.mid",
        "Bach/book 2/b.mid",
        "Johann Sebastian Bach/c.MID",
        "loose.mid",
    }
    assert pieces["Bach/book 2/b.mid"].composer == "bach"
    assert pieces["Johann Sebastian Bach/c.MID"].composer == "johann-sebastian-bach"
    assert pieces["loose.mid"].composer is None
    assert pieces["Bach/a.mid"].read_bytes() == (tmp_path / "Bach" / "a.mid").read_bytes()
    assert len({p.song_id for p in pieces.values()}) == 4
    surnames = iter_source({"kind": "folder", "path": str(tmp_path), "composer_surname": True}, "p")
    assert by_name(surnames)["Johann Sebastian Bach/c.MID"].composer == "bach"


def test_folder_composer_from_csv(tmp_path):
    root = tmp_path / "midis"
    for name in ("x/one.mid", "x/two.mid", "three.mid", "unlisted.mid"):
        write(root / name, build_midi(pitch=60 + len(name)))
    write_csv(
        root / "meta.csv",
        ["path", "composer", "genre", "song"],
        [
            ["x/one.mid", "Scott Joplin", "Rag; Piano", "maple"],
            ["x/two.mid", "Scott Joplin", "rag", "maple"],
            ["three.mid", "", "", ""],
            ["gone.mid", "Nobody", "", ""],
        ],
    )
    spec = {
        "kind": "folder",
        "name": "lab",
        "path": str(root),
        "composer_from": "csv",
        "metadata_csv": "meta.csv",
    }
    pieces = by_name(iter_source(spec, "data.sources[0]"))
    assert set(pieces) == {
        "x/one.mid",
        "x/two.mid",
        "three.mid",
    }  # gone.mid missing, unlisted skipped
    assert pieces["x/one.mid"].composer == "scott-joplin"
    assert pieces["x/one.mid"].genres == ["rag", "piano"]
    assert pieces["x/one.mid"].song_id == pieces["x/two.mid"].song_id == "maple"
    assert pieces["three.mid"].composer is None
    everything = by_name(iter_source({**spec, "include_unlisted": True}, "data.sources[0]"))
    assert "unlisted.mid" in everything and everything["unlisted.mid"].composer is None


def test_folder_csv_errors(tmp_path):
    write(tmp_path / "a.mid", build_midi())
    write_csv(tmp_path / "meta.csv", ["file", "who"], [["a.mid", "x"]])
    spec = {
        "kind": "folder",
        "path": str(tmp_path),
        "composer_from": "csv",
        "metadata_csv": "meta.csv",
    }
    with pytest.raises(SourceError, match=r"data\.sources\[4\]\.metadata_csv.*'path'"):
        iter_source(spec, "data.sources[4]")
    with pytest.raises(SourceError, match=r"metadata_csv: file not found"):
        iter_source({**spec, "metadata_csv": "nope.csv"}, "data.sources[4]")
    with pytest.raises(SourceError, match=r"metadata_csv: required"):
        iter_source({**spec, "metadata_csv": None}, "data.sources[4]")


# -- XMIDI ------------------------------------------------------------------------------------


def test_xmidi_labels_from_file_names(tmp_path, caplog):
    write(tmp_path / "XMIDI_Happy_Pop_ABC123.midi", build_midi())
    write(tmp_path / "sub" / "XMIDI_Sad_Classical_9ZZ8Q.midi", build_midi(pitch=50))
    write(tmp_path / "random_song.mid", build_midi(pitch=52))
    write(tmp_path / "XMIDI_Angry.midi", build_midi(pitch=53))
    with caplog.at_level(logging.WARNING):
        pieces = by_name(
            iter_source({"kind": "xmidi", "name": "xmidi", "path": str(tmp_path)}, "p")
        )
    assert set(pieces) == {"XMIDI_Happy_Pop_ABC123.midi", "sub/XMIDI_Sad_Classical_9ZZ8Q.midi"}
    happy = pieces["XMIDI_Happy_Pop_ABC123.midi"]
    assert (happy.emotion, happy.genres, happy.song_id) == ("happy", ["pop"], "ABC123")
    assert pieces["sub/XMIDI_Sad_Classical_9ZZ8Q.midi"].genres == ["classical"]
    assert "2 files skipped" in caplog.text


# -- EMOPIA -----------------------------------------------------------------------------------


def emopia_tree(root: Path) -> Path:
    clips = ["Q3_abc_0", "Q3_abc_1", "Q1__8v0MFBZoco_0", "Q2_a_b_c_2", "Q4_zz_0", "Q2_a_b_c_3"]
    for i, clip in enumerate(clips):
        write(root / "midis" / f"{clip}.mid", build_midi(pitch=50 + i))
    # the official files are pandas exports: an unnamed index column, then clip_name
    write_csv(
        root / "split" / "train_clip.csv",
        ["", "clip_name"],
        [[0, "Q3_abc_0.mid"], [1, "Q3_abc_1.mid"]],
    )
    write_csv(root / "split" / "val_clip.csv", ["", "clip_name"], [[0, "Q1__8v0MFBZoco_0.mid"]])
    write_csv(root / "split" / "test_clip.csv", ["", "clip_name"], [[0, "Q2_a_b_c_2.mid"]])
    return root


def test_emopia_quadrants_songs_and_official_split(tmp_path):
    root = emopia_tree(tmp_path / "EMOPIA_1.0")
    pieces = {
        Path(p.name).stem: p
        for p in iter_source({"kind": "emopia", "name": "emopia", "path": str(root)}, "p")
    }
    q3 = pieces["Q3_abc_0"]
    assert (q3.emotion, q3.valence, q3.arousal, q3.split) == ("Q3", -1.0, -1.0, "train")
    assert pieces["Q3_abc_1"].song_id == q3.song_id == "abc"
    assert pieces["Q1__8v0MFBZoco_0"].song_id == "_8v0MFBZoco"
    assert pieces["Q1__8v0MFBZoco_0"].split == "valid"
    q2 = pieces["Q2_a_b_c_2"]
    assert (q2.valence, q2.arousal, q2.split, q2.song_id) == (-1.0, 1.0, "test", "a_b_c")
    q4 = pieces["Q4_zz_0"]  # in no split file, nor its song: train (not valid or test)
    assert (q4.valence, q4.arousal, q4.split) == (1.0, -1.0, "train")
    assert "Q2_a_b_c_3" not in pieces  # unlisted, its song in test: left out, test as published
    no_split = iter_source({"kind": "emopia", "path": str(root), "use_official_split": False}, "p")
    assert all(p.split is None for p in no_split)


def test_emopia_split_csv_without_clip_name(tmp_path):
    root = emopia_tree(tmp_path)
    write_csv(root / "split" / "val_clip.csv", ["", "name"], [[0, "x.mid"]])
    with pytest.raises(SourceError, match=r"data\.sources\[0\]\.split_dir.*clip_name"):
        iter_source({"kind": "emopia", "path": str(root)}, "data.sources[0]")


# -- VGMIDI -----------------------------------------------------------------------------------

VG_HEADER = ["id", "series", "console", "game", "piece", "midi", "valence", "arousal"]


def vgmidi_tree(root: Path) -> Path:
    a, b = "Zelda_N64_Ocarina_Lullaby", "Mario_SNES_World_Map"
    write(root / "midi" / f"{a}.mid", build_midi(n_bars=4))
    write(root / "midi" / f"{b}.mid", build_midi(n_bars=3, pitch=55))
    for phrase in (f"{a}_0", f"{a}_1", f"{b}_0"):
        write(root / "phrases" / f"{phrase}.mid", build_midi(n_bars=2, pitch=58))
    write_csv(
        root / "vgmidi_labelled.csv",
        VG_HEADER,
        [
            [1, "Zelda", "N64", "Ocarina", "Lullaby", f"labelled/phrases/{a}_0.mid", 1, -1],
            [2, "Zelda", "N64", "Ocarina", "Lullaby", f"labelled/phrases/{a}_1.mid", -1, -1],
            [3, "Mario", "SNES", "World", "Map", f"labelled/phrases/{b}_0.mid", 1, 1],
        ],
    )
    listener = {"age": "21-25", "country": "US", "gender": "Male", "musicianship": 1}
    raw_1 = {  # pieceN keys are local to each file: piece0 here is not piece0 in raw_2
        "pieces": {"piece0": {"midi": f"{a}.mid", "measures": 4, "name": "Lullaby", "duration": 9}},
        "annotations": {
            "piece0_1": {**listener, "valence": [0.5, 0.5, 0.0, 1.0], "arousal": [-1, 0, 0, 0]},
            "piece0_2": {
                **listener,
                "valence": [0.0, -0.5, 0.0, 1.0, 0.7],
                "arousal": [0, 0, 1, 1, 1],
            },
            "piece0_3": {**listener, "valence": [1.0, 1.0], "arousal": [1.0, 1.0]},  # left early
            "piece9_1": {**listener, "valence": [1.0], "arousal": [1.0]},  # not in pieces
        },
    }
    raw_2 = {
        "pieces": {"piece0": {"midi": f"{b}.mid", "measures": 3, "name": "Map", "duration": 5}},
        "annotations": {
            "piece0_1": {**listener, "valence": [0.2, 0.4, 0.6], "arousal": [0.1, 0.1, 0.1]}
        },
    }
    write(root / "annotations" / "vgmidi_raw_1.json", json.dumps(raw_1))
    write(root / "annotations" / "vgmidi_raw_2.json", json.dumps(raw_2))
    return root


def test_vgmidi_pieces_with_bar_labels(tmp_path):
    root = vgmidi_tree(tmp_path / "vgmidi")
    pieces = by_name(iter_source({"kind": "vgmidi", "name": "vgmidi", "path": str(root)}, "p"))
    assert set(pieces) == {"midi/Zelda_N64_Ocarina_Lullaby.mid", "midi/Mario_SNES_World_Map.mid"}
    lullaby = pieces["midi/Zelda_N64_Ocarina_Lullaby.mid"]
    bars = [
        (b.bar, round(b.valence, 4), round(b.arousal, 4), b.n_raters) for b in lullaby.bar_labels
    ]
    assert bars == [
        (0, 0.5, 0.0, 3),  # (0.5 + 0 + 1) / 3, (-1 + 0 + 1) / 3
        (1, 0.3333, 0.3333, 3),
        (2, 0.0, 0.5, 2),
        (3, 1.0, 0.5, 2),  # the 5th value of piece0_2 is past the piece's 4 measures
    ]
    # piece level: the mean of its two phrases' CSV labels (+1, -1) and (-1, -1)
    assert (lullaby.valence, lullaby.arousal, lullaby.emotion) == (0.0, -1.0, None)
    world = pieces["midi/Mario_SNES_World_Map.mid"]
    assert [b.n_raters for b in world.bar_labels] == [1, 1, 1]
    assert (world.valence, world.arousal, world.emotion) == (1.0, 1.0, "Q1")
    assert world.genres == ["video-game"]


def test_vgmidi_phrases_share_the_song_of_their_piece(tmp_path):
    root = vgmidi_tree(tmp_path)
    pieces = by_name(iter_source({"kind": "vgmidi", "path": str(root), "files": "both"}, "p"))
    assert len(pieces) == 5
    phrase = pieces["phrases/Zelda_N64_Ocarina_Lullaby_1.mid"]
    assert (phrase.valence, phrase.arousal, phrase.emotion) == (-1.0, -1.0, "Q3")
    assert phrase.bar_labels == []
    assert phrase.song_id == pieces["midi/Zelda_N64_Ocarina_Lullaby.mid"].song_id
    assert pieces["phrases/Zelda_N64_Ocarina_Lullaby_0.mid"].emotion == "Q4"


def test_vgmidi_missing_annotation_file(tmp_path):
    root = vgmidi_tree(tmp_path)
    (root / "annotations" / "vgmidi_raw_2.json").unlink()
    with pytest.raises(SourceError, match=r"data\.sources\[5\]\.annotations.*vgmidi_raw_2"):
        iter_source({"kind": "vgmidi", "path": str(root)}, "data.sources[5]")


def test_vgmidi_real_annotations(external_data):
    root = external_data / "vgmidi"
    if not root.is_dir():
        pytest.skip("no vgmidi folder in MIDIPIPE_EXTERNAL_DATA")
    pieces = by_name(iter_source({"kind": "vgmidi", "path": str(root)}, "p"))
    assert len(pieces) == len(list((root / "midi").glob("*.mid")))
    raw = json.loads((root / "annotations" / "vgmidi_raw_1.json").read_text())
    info = raw["pieces"]["piece0"]
    traces = [a for k, a in raw["annotations"].items() if k.rsplit("_", 1)[0] == "piece0"]
    piece = pieces[f"midi/{info['midi']}"]
    assert len(piece.bar_labels) == info["measures"]
    first = piece.bar_labels[0]
    assert first.n_raters == len(traces)
    assert first.valence == pytest.approx(sum(t["valence"][0] for t in traces) / len(traces))
    assert first.arousal == pytest.approx(sum(t["arousal"][0] for t in traces) / len(traces))
    labelled = [p for p in pieces.values() if p.bar_labels]
    assert len(labelled) >= 190 and all(
        -1 <= b.valence <= 1 for p in labelled for b in p.bar_labels
    )
    assert sum(p.valence is not None for p in pieces.values()) >= 190


# -- MidiCaps ---------------------------------------------------------------------------------


def midicaps_row(location: str, genre: list[str], test_set: bool) -> dict:
    return {
        "location": location,
        "caption": "A short classical piece featuring piano, in A major at 104 bpm.",
        "genre": genre,
        "genre_prob": [0.23, 0.21][: len(genre)],
        "mood": ["film", "melodic"],
        "mood_prob": [0.14, 0.07],
        "key": "A major",
        "time_signature": "3/4",
        "tempo": 104,
        "tempo_word": "Moderato",
        "duration": 25,
        "duration_word": "Short fragment",
        "chord_summary": ["A", "E7"],
        "chord_summary_occurence": 3,
        "instrument_summary": ["Piano"],
        "instrument_numbers_sorted": [0],
        "all_chords": ["A", "E7", "A"],
        "all_chords_timestamps": [0.5, 1.9, 3.3],
        "test_set": test_set,
    }


def test_midicaps_over_an_lmd_tree(tmp_path):
    lmd = tmp_path / "lmd"
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(3)]
    for i, md5 in enumerate(md5s[:2]):
        write(lmd / "lmd_full" / md5[0] / f"{md5}.mid", build_midi(pitch=50 + i))
    rows = [
        midicaps_row(f"lmd_full/{md5s[0][0]}/{md5s[0]}.mid", ["classical", "electronic"], False),
        midicaps_row(f"lmd_full/{md5s[1][0]}/{md5s[1]}.mid", ["Hip Hop"], True),
        midicaps_row(f"lmd_full/{md5s[2][0]}/{md5s[2]}.mid", ["pop"], False),  # not downloaded
    ]
    meta = write(tmp_path / "train.json", "\n".join(json.dumps(r) for r in rows) + "\n")
    spec = {"kind": "midicaps", "name": "midicaps", "metadata": str(meta), "lmd_root": str(lmd)}
    pieces = list(iter_source(spec, "p"))
    assert [p.song_id for p in pieces] == [md5s[0], md5s[1]]
    assert pieces[0].genres == ["classical", "electronic"] and pieces[0].split is None
    assert pieces[1].genres == ["hip-hop"] and pieces[1].split == "test"
    assert pieces[0].path.read_bytes() == build_midi(pitch=50)
    top1 = list(iter_source({**spec, "max_genres": 1}, "p"))
    assert top1[0].genres == ["classical"]


def test_midicaps_location_escaping_the_root(tmp_path):
    (tmp_path / "lmd").mkdir()
    meta = write(
        tmp_path / "train.json", json.dumps(midicaps_row("../../secret.mid", ["pop"], False))
    )
    spec = {"kind": "midicaps", "metadata": str(meta), "lmd_root": str(tmp_path / "lmd")}
    with pytest.raises(SourceError, match=r"data\.sources\[6\]\.metadata.*escapes"):
        iter_source(spec, "data.sources[6]")


# -- MAESTRO ----------------------------------------------------------------------------------

MAESTRO_HEADER = [
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
]


def test_maestro_csv(tmp_path):
    root = tmp_path / "maestro-v3.0.0"
    files = {
        "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05.midi": 50,
        "2006/MIDI-Unprocessed_07_R1_2006_01-04_ORIG_MID--AUDIO_07_R1_2006_04_Track04_wav.midi": 52,
        "2018/MIDI-Unprocessed_Chamber1_MID--AUDIO_07_R3_2018_wav--1.midi": 54,
    }
    for name, pitch in files.items():
        write(root / name, build_midi(pitch=pitch))
    names = list(files)
    write_csv(
        root / "maestro-v3.0.0.csv",
        MAESTRO_HEADER,
        [
            [
                "Frédéric Chopin",
                "Ballade No. 1 in G Minor, Op. 23",
                "train",
                2004,
                names[0],
                "x.wav",
                560.1,
            ],
            [
                "Frédéric Chopin",
                "Ballade No. 1 in G Minor, Op. 23",
                "train",
                2006,
                names[1],
                "y.wav",
                570.2,
            ],
            [
                "Franz Schubert / Franz Liszt",
                "Ständchen",
                "validation",
                2018,
                names[2],
                "z.wav",
                300.0,
            ],
            ["Johann Sebastian Bach", "Prelude", "test", 2018, "2018/missing.midi", "w.wav", 60.0],
        ],
    )
    pieces = list(iter_source({"kind": "maestro", "name": "maestro", "path": str(root)}, "p"))
    assert [p.name for p in pieces] == names  # the missing file is skipped
    assert pieces[0].composer == "chopin" and pieces[0].split == "train"
    assert pieces[0].song_id == pieces[1].song_id  # two performances of one work
    assert pieces[2].composer == "schubert" and pieces[2].split == "valid"
    assert pieces[2].song_id != pieces[0].song_id


def test_maestro_without_csv(tmp_path):
    with pytest.raises(SourceError, match=r"data\.sources\[7\]\.csv: no maestro-v\*\.csv"):
        iter_source({"kind": "maestro", "path": str(tmp_path)}, "data.sources[7]")


# -- GigaMIDI ---------------------------------------------------------------------------------


def gigamidi_rows(n: int, split: str = "train") -> list[dict]:
    rows = []
    for i in range(n):
        music = build_midi(n_bars=2 + i, pitch=48 + i)
        rows.append(
            {
                "split": split,
                "md5": hashlib.md5(music).hexdigest(),
                "music": music,
                "NOMML": [12, 2],
                "num_tracks": 1,
                "TPQN": 480,
                "total_notes": 10 + i,
                "tempo": "[MetronomeMark(time=0, qpm=120.0)]",
                "loop_track_idx": [0],
                "loop_instrument_type": ["piano"],
                "instrument_category__drums-only__0__all-instruments-with-drums__1_no-drums__2": 2,
                "music_styles_curated": ["Classical", "Romantic"] if i % 2 == 0 else [],
                "music_style_scraped": "Soft Rock" if i % 2 else "",
                "music_style_audio_text_Discogs": ["electronic"],
                "music_style_audio_text_Lastfm": [],
                "music_style_audio_text_Tagtraum": [],
                "title": f"Song {i}",
                "artist": "The Band" if i % 2 else "",
            }
        )
    return rows


def write_gigamidi_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("split", pa.string()),
            ("md5", pa.string()),
            ("music", pa.binary()),
            ("NOMML", pa.list_(pa.int64())),
            ("num_tracks", pa.int64()),
            ("TPQN", pa.int64()),
            ("total_notes", pa.int64()),
            ("tempo", pa.string()),
            ("loop_track_idx", pa.list_(pa.int64())),
            ("loop_instrument_type", pa.list_(pa.string())),
            (
                "instrument_category__drums-only__0__all-instruments-with-drums__1_no-drums__2",
                pa.int64(),
            ),
            ("music_styles_curated", pa.list_(pa.string())),
            ("music_style_scraped", pa.string()),
            ("music_style_audio_text_Discogs", pa.list_(pa.string())),
            ("music_style_audio_text_Lastfm", pa.list_(pa.string())),
            ("music_style_audio_text_Tagtraum", pa.list_(pa.string())),
            ("title", pa.string()),
            ("artist", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=2)
    return path


def test_gigamidi_local_parquet(tmp_path):
    rows = gigamidi_rows(5)
    write_gigamidi_parquet(tmp_path / "v2.0.0" / "train" / "part-0.parquet", rows[:3])
    write_gigamidi_parquet(
        tmp_path / "v2.0.0" / "validation" / "part-0.parquet",
        [{**r, "split": "validation"} for r in rows[3:]],
    )
    spec = {
        "kind": "gigamidi",
        "name": "giga",
        "parquet": str(tmp_path / "v2.0.0" / "**" / "*.parquet"),
        "batch_size": 2,
    }
    pieces = list(iter_source(spec, "p"))
    assert [p.name for p in pieces] == [r["md5"] for r in rows[:3]] + [r["md5"] for r in rows[3:]]
    for piece, row in zip(pieces, rows[:3] + rows[3:], strict=True):
        assert piece.data == row["music"] and hashlib.md5(piece.data).hexdigest() == row["md5"]
        # renditions group by normalised artist + title; without an artist, the md5
        assert piece.song_id == (f"band/song-{row['title'][-1]}" if row["artist"] else row["md5"])
    assert pieces[0].genres == ["classical", "romantic"] and pieces[0].composer is None
    assert pieces[1].genres == ["soft-rock"] and pieces[1].composer == "the-band"
    assert [p.split for p in pieces] == ["train"] * 3 + ["valid"] * 2
    assert len(list(iter_source({**spec, "limit": 2}, "p"))) == 2
    assert len(list(iter_source({**spec, "split": "validation"}, "p"))) == 2


def test_gigamidi_parquet_errors(tmp_path):
    with pytest.raises(SourceError, match=r"data\.sources\[8\]\.parquet: no Parquet file"):
        iter_source({"kind": "gigamidi", "parquet": str(tmp_path / "*.parquet")}, "data.sources[8]")
    with pytest.raises(SourceError, match=r"exactly one of parquet"):
        iter_source({"kind": "gigamidi"}, "data.sources[8]")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"md5": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match=r"\['music'\]"):
        iter_source(
            {"kind": "gigamidi", "parquet": str(tmp_path / "bad.parquet")}, "data.sources[8]"
        )


def test_gigamidi_streaming_goes_through_the_same_rows(monkeypatch):
    import datasets

    rows = gigamidi_rows(4, split="test")
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return stream

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = {
        "kind": "gigamidi",
        "name": "giga",
        "hf_name": "Metacreation/GigaMIDI",
        "hf_config": "v2.0.0",
        "split": "test",
        "limit": 3,
    }
    pieces = list(iter_source(spec, "p"))
    assert calls == [
        ("Metacreation/GigaMIDI", "v2.0.0", {"split": "test", "revision": None, "streaming": True})
    ]
    assert [p.data for p in pieces] == [r["music"] for r in rows[:3]]
    assert [p.split for p in pieces] == ["test"] * 3
    assert pieces[1].genres == ["soft-rock"]


def test_gigamidi_hub_unreachable_is_a_source_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError, match=r"data\.sources\[9\]\.hf_name.*no network"):
        iter_source({"kind": "gigamidi", "hf_name": "Metacreation/GigaMIDI"}, "data.sources[9]")


# -- music21 ----------------------------------------------------------------------------------


def test_music21_default_selection_plan():
    """Planning only (no parsing): size, and enough composers to condition a generator on."""
    works = m21.plan(m21.Music21Options(), m21.corpus_root())
    assert 300 <= len(works) <= 500
    per_composer: dict[str, int] = {}
    for work in works:
        if work.entry.composer:
            per_composer[work.entry.composer] = per_composer.get(work.entry.composer, 0) + 1
    assert len([c for c, n in per_composer.items() if n >= 10]) >= 5
    assert {"bach", "palestrina", "monteverdi", "mozart", "beethoven"} <= set(per_composer)
    assert len({w.entry.period for w in works}) >= 6
    assert len({w.name for w in works}) == len(works)
    assert m21.plan(m21.Music21Options(), m21.corpus_root()) == works  # stable
    assert all(e.group in {w.entry.group for w in works} for e in CATALOGUE if e.in_default)


def test_music21_tune_types():
    assert tune_type("double jig", "The Frost is All Over") == "jig"
    assert tune_type(None, "ACACIA -- REEL") == "reel"
    assert tune_type("slip jig", None) == "slip-jig"
    assert tune_type("air", "x") == "air" and tune_type(None, "The Air") is None


def test_music21_small_selection_converts_with_labels_deterministically():
    spec = {
        "kind": "music21",
        "name": "m21",
        "selection": ["corelli", "ryans", "oneills", "josquin", "palestrina"],
        "max_per_group": 1,
        "workers": 2,
    }
    pieces = by_name(iter_source(spec, "data.sources[0]"))
    assert len(pieces) == 5
    for piece in pieces.values():
        assert piece.data[:4] == b"MThd" and piece.source == "m21"
        assert symusic.Score.from_midi(piece.data).note_num() > 20
    corelli = pieces["corelli/opus3no1/1grave.xml"]
    assert (corelli.composer, corelli.period) == ("corelli", "baroque")
    assert {"trio-sonata", "instrumental"} <= set(corelli.genres)
    assert len(symusic.Score.from_midi(corelli.data).tracks) == 3
    (tune,) = [p for n, p in pieces.items() if n.startswith("oneills1850/")]
    assert "#" in tune.name and tune.period == "folk" and tune.composer is None
    (ryan,) = [p for n, p in pieces.items() if n.startswith("ryansMammoth/")]
    assert ryan.genres[-1] in {"reel", "jig", "hornpipe", "strathspey", "march", "waltz"}
    (josquin,) = [p for n, p in pieces.items() if n.startswith("josquin/")]
    assert len(symusic.Score.from_midi(josquin.data).tracks) >= 2  # voices merged into one score
    (mass,) = [p for n, p in pieces.items() if n.startswith("palestrina/")]
    assert mass.song_id.startswith("palestrina/missa-") and "mass" in mass.genres
    # the same bytes when converted again, here in this process
    root = m21.corpus_root()
    for name in ("corelli/opus3no1/1grave.xml", ryan.name, josquin.name):
        again, _, error = m21.convert_file(str(root / name), None, name.startswith("josquin/"))
        assert error is None and again == pieces[name].data


def test_music21_bad_and_slow_pieces_are_skipped(tmp_path, caplog):
    write(
        tmp_path / "good.abc",
        "X:1\nT:Test Reel\nR:reel\nM:4/4\nL:1/8\nK:D\nDEFG ABcd|dcBA GFED|]\n",
    )
    write(tmp_path / "bad.xml", "<score-partwise><part-list></score-partwise")
    entry = Entry("test", "*", "folk", ("instrumental",))
    works = [m21.Work(entry, "bad.xml"), m21.Work(entry, "good.abc", None, "Test Reel", "reel")]
    options = m21.Music21Options(workers=1, timeout_s=30)
    with caplog.at_level(logging.WARNING):
        pieces = list(m21._convert_all(works, options, "m21", tmp_path))
    assert [p.name for p in pieces] == ["good.abc"] and pieces[0].genres == ["instrumental", "reel"]
    assert "skipped bad.xml" in caplog.text
    # a piece over its time limit is stopped inside the worker and reported, not raised
    data, _, error = m21.convert_task(
        (str(m21.corpus_root() / "joplin/maple_leaf_rag.mxl"), None, False, True, 0.05)
    )
    assert data is None and "took more than" in error


def test_emopia_real_official_split_is_kept_exactly(external_data):
    root = external_data / "emopia"
    if not (root / "split").is_dir():
        pytest.skip("no emopia folder in MIDIPIPE_EXTERNAL_DATA")
    pieces = list(iter_source({"kind": "emopia", "path": str(root)}, "p"))
    listed = {
        split: {Path(r["clip_name"]).stem for r in csv.DictReader((root / "split" / name).open())}
        for split, name in (("valid", "val_clip.csv"), ("train", "train_clip.csv"))
    }
    valid = {Path(p.name).stem for p in pieces if p.split == "valid"}
    assert valid == listed["valid"]  # no unlisted clip joins the published val split
    songs = {s: {p.song_id for p in pieces if p.split == s} for s in ("train", "valid")}
    assert not songs["train"] & songs["valid"]
    assert {Path(p.name).stem for p in pieces if p.split == "train"} >= listed["train"]
