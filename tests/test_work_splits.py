"""Splits by work: every adapter's grouping key, and no song on both sides of a split."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict

import pytest
from conftest import build_midi
from test_sources import gigamidi_rows, midicaps_row, write, write_csv, write_gigamidi_parquet

from midipipe.data import splits
from midipipe.data.sources import SourceError, iter_source
from midipipe.data.sources.names import work_key


def test_work_key_normalises_artist_and_title():
    key = work_key("The Beatles", "Let It Be (Remastered 2009)")
    assert key == work_key("Beatles feat. Billy Preston", "Let it be - Live") == "beatles/let-it-be"
    assert work_key("Beyoncé", "Halo") == "beyonce/halo"
    assert work_key("", "Halo") is None and work_key("Artist", None) is None


def test_song_splits_follow_official_lists_and_conflicts_are_named(caplog):
    pieces = [("a", "valid"), ("a", None), ("b", "train"), ("b", "test"), ("c", None)]
    with caplog.at_level(logging.WARNING):
        chosen, conflicts = splits.assign_songs(pieces, 1, 0.1, 0.1)
    assert chosen[:2] == ["valid", "valid"]  # a clip without an official split joins its song
    assert chosen[2] == chosen[3] == "test"  # a tie goes to the held-out side
    assert conflicts == ["b"] and "song b" in caplog.text and "train (1 clips)" in caplog.text
    assert chosen[4] == splits.assign("c", 1, 0.1, 0.1)


def asap_like(root):
    """Two works, each with a score and performances; the CSV lists the score on every row."""
    rows = []
    for w, work in enumerate(["Bach/Prelude/bwv_846", "Chopin/Etudes/op_10_1"]):
        write(root / work / "midi_score.mid", build_midi(pitch=40 + w))
        for k in range(3):
            write(root / work / f"P{k}.mid", build_midi(pitch=50 + 3 * w + k))
            rows.append([work.split("/")[0], work, f"{work}/midi_score.mid", f"{work}/P{k}.mid"])
    return write_csv(
        root / "metadata.csv", ["composer", "folder", "midi_score", "midi_performance"], rows
    )


ASAP_SPEC = {
    "kind": "folder",
    "name": "asap",
    "composer_from": "csv",
    "metadata_csv": "metadata.csv",
    "path_column": ["midi_performance", "midi_score"],
    "song_column": "folder",
}


def test_folder_csv_column_map_groups_scores_with_performances(tmp_path):
    asap_like(tmp_path)
    pieces = list(iter_source({**ASAP_SPEC, "path": str(tmp_path)}, "p"))
    assert len(pieces) == 8  # 6 performances + 2 scores, each score once
    works = defaultdict(set)
    for p in pieces:
        works[p.song_id].add(p.name.rsplit("/", 1)[1])
    assert dict(works) == {
        "Bach/Prelude/bwv_846": {"midi_score.mid", "P0.mid", "P1.mid", "P2.mid"},
        "Chopin/Etudes/op_10_1": {"midi_score.mid", "P0.mid", "P1.mid", "P2.mid"},
    }
    assert {p.composer for p in pieces} == {"bach", "chopin"}


def test_folder_csv_paths_cannot_escape_the_root(tmp_path):
    write_csv(tmp_path / "m.csv", ["composer", "p", "q"], [["X", "a.mid", "../../etc/passwd"]])
    spec = {"kind": "folder", "path": str(tmp_path), "composer_from": "csv"}
    with pytest.raises(SourceError, match="escapes its root"):
        iter_source({**spec, "metadata_csv": "m.csv", "path_column": ["p", "q"]}, "p")


def test_midicaps_groups_versions_by_msd_id_then_artist_title(tmp_path):
    lmd = tmp_path / "lmd"
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(4)]
    locations = [
        f"lmd_matched/A/B/C/TRABCDE123456789AB/{md5s[0]}.mid",  # MSD id in the path
        f"lmd_full/{md5s[1][0]}/{md5s[1]}.mid",  # MSD id from match_scores
        f"lmd_full/{md5s[2][0]}/{md5s[2]}.mid",  # artist + title
        f"lmd_full/{md5s[3][0]}/{md5s[3]}.mid",  # nothing: its md5
    ]
    rows = []
    for i, location in enumerate(locations):
        write(lmd / location, build_midi(pitch=50 + i))
        rows.append(midicaps_row(location, ["pop"], False))
    rows[2] |= {"artist": "The Band", "title": "Song (Live)"}
    meta = write(tmp_path / "train.json", "\n".join(json.dumps(r) for r in rows))
    scores = write(
        tmp_path / "match_scores.json",
        json.dumps({"TRZZZZZ000000000ZZ": {md5s[1]: 0.9}, "TRYYYYY000000000YY": {md5s[1]: 0.5}}),
    )
    spec = {"kind": "midicaps", "metadata": str(meta), "lmd_root": str(lmd)}
    got = [p.song_id for p in iter_source({**spec, "match_scores": str(scores)}, "p")]
    assert got == ["msd:TRABCDE123456789AB", "msd:TRZZZZZ000000000ZZ", "band/song", md5s[3]]


def test_gigamidi_renditions_share_a_song(tmp_path):
    rows = gigamidi_rows(3)
    for row in rows:
        row |= {"artist": "Some Artist", "title": "Same Song"}
    path = write_gigamidi_parquet(tmp_path / "g.parquet", rows)
    pieces = list(iter_source({"kind": "gigamidi", "parquet": str(path)}, "p"))
    assert {p.song_id for p in pieces} == {"some-artist/same-song"}


def test_asap_no_work_straddles_splits(external_data):
    """ASAP as it is: a work's score and performances land in one split."""
    spec = {**ASAP_SPEC, "path": str(external_data / "asap")}
    pieces = list(iter_source(spec, "data.sources[0]"))
    assert len(pieces) == 1302  # 1,067 performances and 235 scores, each once
    chosen, conflicts = splits.assign_songs([(p.song_id, p.split) for p in pieces], 1234, 0.1, 0.1)
    by_work = defaultdict(set)
    for piece, split in zip(pieces, chosen, strict=True):
        by_work[piece.song_id].add(split)
    assert not conflicts and all(len(s) == 1 for s in by_work.values())
    assert len(by_work) == 235 and len({s for (s,) in by_work.values()}) == 3
    scored = {p.song_id for p in pieces if p.name.endswith("midi_score.mid")}
    assert scored == set(by_work)  # every work's score is in, beside its performances


def test_organize_writes_one_split_per_work(tmp_path):
    import pyarrow.parquet as pq

    from midipipe.core.params import Params, build
    from midipipe.data.organize import organize

    asap_like(tmp_path / "asap")
    params = build(
        Params,
        {
            "data": {"sources": [{**ASAP_SPEC, "path": str(tmp_path / "asap")}]},
            "organize": {"workers": 1, "valid_frac": 0.45, "test_frac": 0.45},
        },
    )
    summary = organize(params, tmp_path / "data")
    rows = pq.read_table(tmp_path / "data" / "manifest.parquet").to_pylist()
    assert summary["pieces"] == 8 and summary["songs"] == 2
    assert summary["split_conflicting_songs"] == 0
    by_song = defaultdict(set)
    for r in rows:
        by_song[r["song_id"]].add(r["split"])
    assert all(len(s) == 1 for s in by_song.values())


def test_emopia_official_split_keeps_songs_whole(external_data):
    """The official lists are song-disjoint; the clips they leave out follow their song into
    train, or are left out when their song is in val (val stays the official 198 clips)."""
    spec = {"kind": "emopia", "path": str(external_data / "emopia")}
    pieces = list(iter_source(spec, "p"))
    chosen, conflicts = splits.assign_songs([(p.song_id, p.split) for p in pieces], 1234, 0.1, 0.1)
    assert not conflicts
    by_song = defaultdict(set)
    for piece, split in zip(pieces, chosen, strict=True):
        by_song[piece.song_id].add(split)
    assert all(len(s) == 1 for s in by_song.values())
    assert all(p.split in ("train", "valid") for p in pieces)
    assert sum(p.split == "valid" for p in pieces) == 198


def test_organize_sends_each_song_where_most_of_its_official_clips_are(tmp_path, caplog):
    """Renditions of one song in several official splits: the song goes where most are (a tie
    to the held-out side), its shard rows are rewritten to match, and both songs are named."""
    import pyarrow.parquet as pq

    from midipipe.core.params import Params, build
    from midipipe.data.organize import organize

    rows = gigamidi_rows(5)
    official = ["train", "train", "test", "train", "validation"]
    for i, row in enumerate(rows):
        row |= {"artist": "A", "title": "One" if i < 3 else "Two", "split": official[i]}
    path = write_gigamidi_parquet(tmp_path / "g.parquet", rows)
    params = build(
        Params,
        {"data": {"sources": [{"kind": "gigamidi", "parquet": str(path)}]}, "organize": {}},
    )
    with caplog.at_level(logging.WARNING):
        summary = organize(params, tmp_path / "data")
    assert summary["split_conflicting_songs"] == 2 and summary["shards_rewritten"] == 1
    assert "several official splits" in caplog.text
    manifest = pq.read_table(tmp_path / "data" / "manifest.parquet").to_pylist()
    by_song = defaultdict(set)
    for r in manifest:
        by_song[r["song_id"]].add(r["split"])
    assert by_song == {"gigamidi:a/one": {"train"}, "gigamidi:a/two": {"valid"}}
    shard = pq.read_table(tmp_path / "data" / "corpus" / "part-00000.parquet")
    stored = dict(zip(shard["md5"].to_pylist(), shard["split"].to_pylist(), strict=True))
    assert sorted(stored.values()) == ["train"] * 3 + ["validation"] * 2
    assert all(
        stored[r["piece_id"]] == {"valid": "validation"}.get(r["split"], r["split"])
        for r in manifest
    )
