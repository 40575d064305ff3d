"""The corpus store: organize streams a folder into GigaMIDI-schema shards, reads them back by
piece id, keeps bad files as rejects, and re-runs parse only what is new (resume included)."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from midipipe.core.errors import SourceError
from midipipe.core.io import part_files
from midipipe.core.params import Params, build
from midipipe.data import organize as org
from midipipe.data import store
from midipipe.data.midi import piece_id


def _params(root, **organize) -> Params:
    spec = {"kind": "folder", "name": "lab", "path": str(root), "composer_from": "subfolder"}
    opts = {"workers": 2, "rows_per_file": 3, "rows_per_group": 2, **organize}
    return build(Params, {"data": {"sources": [spec]}, "organize": opts})


@pytest.fixture
def lab(tmp_path, make_midi):
    root = tmp_path / "lab"
    for i in range(4):
        make_midi(f"bach/b{i}.mid", folder=root, n_bars=2 + i, pitch=50 + i)
    for i in range(3):
        make_midi(f"mozart/m{i}.mid", folder=root, n_bars=3 + i, pitch=60 + i)
    (root / "mozart" / "copy.mid").write_bytes((root / "mozart" / "m0.mid").read_bytes())
    (root / "bach" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    (root / "bach" / "empty.mid").write_bytes(b"")
    return root


def _store_md5s(corpus) -> list[str]:
    return [m for b in store.iter_batches(corpus, ["md5"]) for m in b.column(0).to_pylist()]


def test_organize_writes_a_gigamidi_store_the_manifest_indexes(lab, tmp_path):
    data = tmp_path / "data"
    summary = org.organize(_params(lab), data)
    corpus = data / "corpus"
    assert summary["pieces"] == 9 and summary["duplicates"] == 1 and summary["rejects"] == 2
    assert summary["shards"] == 3 == len(part_files(corpus))  # 9 pieces, 3 per shard
    assert not (data / "midi").exists()
    meta = pq.ParquetFile(part_files(corpus)[0]).metadata
    assert meta.num_row_groups == 2  # 3 rows in groups of 2: a piece is read without its shard
    assert (
        pq.read_schema(part_files(corpus)[0])
        .remove_metadata()
        .equals(store.SCHEMA.remove_metadata())
    )
    manifest = pq.read_table(data / "manifest.parquet").to_pylist()
    corpus_reader = store.Corpus(corpus, data / "manifest.parquet")
    for row in manifest:
        assert piece_id(corpus_reader.music(row["piece_id"])) == row["piece_id"]
    in_store = {
        r["md5"]: r for b in store.iter_batches(corpus, store.META_COLUMNS) for r in b.to_pylist()
    }
    assert sorted(in_store) == sorted(r["piece_id"] for r in manifest)
    good = next(r for r in manifest if r["original"] == "bach/b1.mid")
    row = in_store[good["piece_id"]]
    assert row["artist"] == "bach" == good["composer"] and row["title"] == "b1"
    assert row["split"] == store.SPLITS[good["split"]] and row["total_notes"] == good["n_notes"] > 0
    rejects = pq.read_table(data / "organize_rejects.parquet").to_pylist()
    assert {r["path"]: r["reason"] for r in rejects} == {
        "bach/broken.mid": in_store[piece_id((lab / "bach/broken.mid").read_bytes())][
            "parse_error"
        ],
        "bach/empty.mid": "empty file (0 bytes)",
    }
    order = corpus_reader.in_store_order()
    got = list(store.read_music(corpus, [corpus_reader.where[p] for p in order]))
    assert [piece_id(b) for b in got] == order


def test_manifest_shard_names_cannot_leave_the_store(tmp_path):
    with pytest.raises(SourceError, match="not a corpus shard"):
        store.part_path(tmp_path, "../../etc/passwd")
    with pytest.raises(SourceError, match="not a corpus shard"):
        store.Reader(tmp_path).music("part-1/../../x.parquet", 0)


def test_rerun_parses_only_new_files_and_drops_removed_ones(lab, tmp_path, make_midi):
    data = tmp_path / "data"
    org.organize(_params(lab), data)
    corpus = data / "corpus"
    stamps = {p.name: p.stat().st_mtime_ns for p in part_files(corpus)}
    again = org.organize(_params(lab), data)
    assert again["parsed"] == 0 and again["reused"] == 9 and again["shards_rewritten"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in part_files(corpus)} == stamps

    make_midi("haydn/h0.mid", folder=lab, n_bars=7, pitch=40)
    (lab / "bach" / "b0.mid").unlink()
    (lab / "mozart").rename(lab / "wolfgang")  # same bytes, a new composer label
    grown = org.organize(_params(lab), data)
    assert grown["parsed"] == 1 and grown["pieces"] == 9 and grown["shards_rewritten"] >= 1
    manifest = pq.read_table(data / "manifest.parquet").to_pylist()
    md5s = _store_md5s(corpus)
    assert sorted(md5s) == sorted(r["piece_id"] for r in manifest)  # b0 gone, no copies
    assert Counter(r["composer"] for r in manifest)["wolfgang"] == 3
    reader = store.Corpus(corpus, data / "manifest.parquet")
    for r in manifest:
        assert piece_id(reader.music(r["piece_id"])) == r["piece_id"]


def test_interrupted_organize_resumes_without_duplicates(lab, tmp_path, monkeypatch):
    data = tmp_path / "data"
    real_add = store.StoreWriter.add
    calls = {"n": 0}

    def crash_after_four(self, row):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_add(self, row)

    monkeypatch.setattr(store.StoreWriter, "add", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        org.organize(_params(lab), data)
    monkeypatch.undo()
    assert len(part_files(data / "corpus")) == 1  # the complete shard survived, no temporaries
    assert not list((data / "corpus").glob(".*"))
    summary = org.organize(_params(lab), data)
    assert summary["reused"] == 3 and summary["parsed"] == 6 and summary["pieces"] == 9
    md5s = _store_md5s(data / "corpus")
    assert len(md5s) == len(set(md5s)) == 9


def _hang_on_marker(item):
    if item[0]["original"].endswith("hang.mid"):
        time.sleep(60)
    return REAL_FACTS(item)


REAL_FACTS = org._facts_of


def test_a_hanging_file_becomes_a_reject_and_nothing_else_is_lost(lab, tmp_path, monkeypatch):
    (lab / "bach" / "hang.mid").write_bytes((lab / "bach" / "b0.mid").read_bytes() + b"\0")
    monkeypatch.setattr(org, "_facts_of", _hang_on_marker)
    summary = org.organize(_params(lab, timeout_s=1.5), tmp_path / "data")
    assert summary["pieces"] == 10 and summary["rejects"] == 3
    rejects = pq.read_table(tmp_path / "data" / "organize_rejects.parquet").to_pylist()
    assert {r["path"]: r["reason"] for r in rejects}["bach/hang.mid"] == "timed out after 1.5 s"


def test_export_writes_composer_folders_from_the_store(lab, tmp_path):
    import subprocess
    import sys

    from midipipe.data.export import export, file_names

    data = tmp_path / "data"
    org.organize(_params(lab), data)
    out = tmp_path / "by_composer"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "midipipe.cli",
            "export",
            "--by",
            "composer",
            str(out),
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.mid"))
    assert len(written) == 9 and "bach/b1.mid" in written and "mozart/m2.mid" in written
    assert (out / "bach" / "b1.mid").read_bytes() == (lab / "bach" / "b1.mid").read_bytes()
    assert not list(out.rglob(".*"))  # no temporaries left
    assert export(data, tmp_path / "by_split", by="split") == 9
    assert {p.name for p in (tmp_path / "by_split").iterdir()} <= {"train", "valid", "test"}
    rows = [{"piece_id": "a" * 32, "original": "x.mid", "composer": "../../etc"}]
    rows.append({"piece_id": "b" * 32, "original": "x.mid", "composer": "../../etc"})
    assert file_names(rows, "composer") == {
        "a" * 32: "etc/x.mid",
        "b" * 32: "etc/x-bbbbbbbb.mid",
    }


def test_tokenize_reads_the_store_and_then_only_what_was_added(lab, tmp_path, make_midi, caplog):
    from midipipe.core.params import TokenizeParams
    from midipipe.tokens.shards import read_parts
    from midipipe.tokens.tokenize import tokenize_corpus

    data = tmp_path / "data"
    org.organize(_params(lab), data)
    params = TokenizeParams(workers=2, musetok=False, rows_per_part=4)
    first = tokenize_corpus(data, params, resume=True)
    assert first.files == 9 and first.remi_pieces == 7 and first.rejects == 2
    rejects = pq.read_table(data / "tokens" / "rejects.parquet").column("path").to_pylist()
    assert sorted(rejects) == ["lab:bach/broken.mid", "lab:bach/empty.mid"]
    make_midi("haydn/h0.mid", folder=lab, n_bars=7, pitch=40)
    org.organize(_params(lab), data)
    with caplog.at_level("INFO"):
        grown = tokenize_corpus(data, params, resume=True)
    assert "resuming after 9 files" in caplog.text
    assert grown.files == 10 and grown.remi_pieces == 8
    ids = read_parts(data / "tokens" / "remi").column("piece_id").to_pylist()
    assert len(ids) == len(set(ids)) == 8
