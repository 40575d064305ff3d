"""01_tokenize on good and bad inputs: bad files become readable rejects, nothing else is lost."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import symusic

from midipipe.core.params import TokenizeParams
from midipipe.tokens import remi
from midipipe.tokens.shards import read_parts
from midipipe.tokens.tokenize import tokenize_files
from tests.conftest import build_midi


def _odd_meter_changes() -> bytes:
    """5/4, then 7/8 from bar 3, then 4/4: real music with meter changes."""
    score = symusic.Score.from_midi(build_midi(n_bars=8, numerator=5, denominator=4))
    bar = 480 * 5
    score.time_signatures.append(symusic.TimeSignature(3 * bar, 7, 8))
    score.time_signatures.append(symusic.TimeSignature(3 * bar + 2 * 420 * 4, 4, 4))
    return score.dumps_midi()


def _millions_of_notes(n: int = 1_200_000) -> bytes:
    track = symusic.Track("dense", 0, False)
    track.notes.extend(
        symusic.Note.from_numpy(
            time=np.arange(n, dtype=np.int32) * 10,
            duration=np.full(n, 10, np.int32),
            pitch=(60 + np.arange(n) % 12).astype(np.int8),
            velocity=np.full(n, 64, np.int8),
        )
    )
    score = symusic.Score(480)
    score.tracks.append(track)
    return score.dumps_midi()


@pytest.fixture
def corpus(tmp_path):
    good = build_midi(n_bars=6)
    files = {
        "good.mid": good,
        "seven_eight.mid": build_midi(n_bars=4, numerator=7, denominator=8),
        "changes.mid": _odd_meter_changes(),
        "zero.mid": b"",
        "truncated.mid": good[: len(good) // 2],
        "random.mid": b"MThd" + np.random.default_rng(0).bytes(300),
        "dense.mid": _millions_of_notes(),
    }
    items = []
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        items.append((f"{i:032x}", str(tmp_path / name)))
    return items


def test_bad_inputs_become_rejects_and_good_ones_land(corpus, tmp_path):
    out = tmp_path / "tokens"
    summary = tokenize_files(corpus, out, TokenizeParams(workers=2, timeout_s=60, batch_size=2))
    assert summary.files == len(corpus)
    remi_ids = read_parts(out / "remi").column("piece_id").to_pylist()
    names = {pid: path.rsplit("/", 1)[1] for pid, path in corpus}
    landed = {names[p] for p in remi_ids}
    assert landed == {"good.mid", "seven_eight.mid", "changes.mid"}
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    remi_rejects = {
        names[r["piece_id"]]: r["reason"] for r in rejects if r["stage"] == "tokenize/remi"
    }
    assert set(remi_rejects) == {"zero.mid", "truncated.mid", "random.mid", "dense.mid"}
    assert remi_rejects["zero.mid"] == "empty file (0 bytes)"
    assert "too many notes: 1200000" in remi_rejects["dense.mid"]
    assert remi_rejects["truncated.mid"].startswith("cannot parse MIDI")
    # the tokenizer config is saved beside the shards and reloads
    assert len(remi.load_tokenizer(out / "remi" / "tokenizer.json")) > 100
    # musetok maps the 7/8 and meter-change pieces' meters (counted) instead of refusing them
    musetok_rejects = {names[r["piece_id"]] for r in rejects if r["stage"] == "tokenize/musetok"}
    assert musetok_rejects == set(remi_rejects)
    assert summary.musetok_remapped_pieces == 2


def test_odd_meters_tokenize_with_their_time_signatures(corpus, tmp_path):
    tok = remi.make_tokenizer()
    for name, meter in (("seven_eight.mid", "TimeSig_7/8"), ("changes.mid", "TimeSig_5/4")):
        path = next(p for _, p in corpus if p.endswith(name))
        ids, bar_starts = remi.encode(tok, symusic.Score(path))
        tokens = [tok[int(i)] for i in ids]
        assert meter in tokens
        assert all(tokens[b] == "Bar_None" for b in bar_starts)
    ids, _ = remi.encode(
        tok, symusic.Score(next(p for _, p in corpus if p.endswith("changes.mid")))
    )
    assert {"TimeSig_5/4", "TimeSig_7/8", "TimeSig_4/4"} <= {tok[int(i)] for i in ids}


def test_bar_starts_slice_bars(tmp_path):
    tok = remi.make_tokenizer()
    ids, bar_starts = remi.encode(tok, symusic.Score.from_midi(build_midi(n_bars=5)))
    assert len(bar_starts) == 5 and bar_starts[0] == 0
    ends = [*bar_starts[1:], len(ids)]
    bars = [ids[a:b] for a, b in zip(bar_starts, ends, strict=True)]
    assert all(bar[0] == tok.vocab["Bar_None"] for bar in bars)


def test_miditok_test_files(external_data, tmp_path):
    """MidiTok's corrupted file and empty.mid are rejected with reasons; its real files land."""
    tests = external_data / "miditok-tests"
    paths = [
        tests / "corrupted" / "ValueError_Control168.mid",
        tests / "one_track" / "empty.mid",
        *sorted((tests / "multitrack").glob("*.mid"))[:4],
    ]
    items = [(f"{i:032x}", str(p)) for i, p in enumerate(paths)]
    summary = tokenize_files(items, tmp_path / "t", TokenizeParams(workers=2))
    rejects = pq.read_table(tmp_path / "t" / "rejects.parquet").to_pylist()
    remi_rejected = {r["path"] for r in rejects if r["stage"] == "tokenize/remi"}
    assert str(paths[1]) in remi_rejected  # empty.mid has no notes
    assert summary.remi_pieces + len(remi_rejected) == len(paths)
    assert summary.remi_pieces >= 4
    assert all(r["reason"] for r in rejects)


def test_an_interrupted_run_resumes_without_duplicates(corpus, tmp_path, monkeypatch, caplog):
    from midipipe.tokens import tokenize

    corpus = [item for item in corpus if not item[1].endswith("dense.mid")]  # 6 files, fast
    params = TokenizeParams(workers=1, rows_per_part=2, musetok=True)
    clean = tokenize_files(corpus, tmp_path / "clean", params)
    real_save, calls = tokenize._save_checkpoint, []

    def crash_after_two(*args):
        real_save(*args)
        calls.append(1)
        if len(calls) == 2:  # killed after 4 of 6 files were checkpointed
            raise KeyboardInterrupt

    monkeypatch.setattr(tokenize, "_save_checkpoint", crash_after_two)
    out = tmp_path / "tokens"
    with pytest.raises(KeyboardInterrupt):
        tokenize_files(corpus, out, params, resume=True)
    monkeypatch.setattr(tokenize, "_save_checkpoint", real_save)
    with caplog.at_level("INFO"):
        resumed = tokenize_files(corpus, out, params, resume=True)
    assert "resuming after 4 files" in caplog.text
    assert resumed.metrics() == clean.metrics()
    for stream in ("remi", "musetok"):
        got = read_parts(out / stream).column("piece_id").to_pylist()
        assert got == read_parts(tmp_path / "clean" / stream).column("piece_id").to_pylist()
        assert len(got) == len(set(got))
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert rejects == pq.read_table(tmp_path / "clean" / "rejects.parquet").to_pylist()
    # a finished run with other code (or params) starts clean
    monkeypatch.setattr(tokenize, "code_version", lambda *roots: "edited")
    caplog.clear()
    with caplog.at_level("INFO"):
        again = tokenize_files(corpus, out, params, resume=True)
    assert "from scratch" in caplog.text and again.metrics() == clean.metrics()


def test_added_files_alone_are_tokenized_and_removed_ones_restart(corpus, tmp_path, caplog):
    corpus = [item for item in corpus if not item[1].endswith("dense.mid")]
    params = TokenizeParams(workers=1, rows_per_part=2, musetok=False)
    clean = tokenize_files(corpus, tmp_path / "clean", params)
    out = tmp_path / "tokens"
    tokenize_files(corpus[:4], out, params, resume=True)
    with caplog.at_level("INFO"):
        grown = tokenize_files(corpus, out, params, resume=True)
    assert "resuming after 4 files" in caplog.text
    assert grown.metrics() == clean.metrics()
    got = read_parts(out / "remi").to_pylist()
    assert sorted(got, key=str) == sorted(
        read_parts(tmp_path / "clean" / "remi").to_pylist(), key=str
    )
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(rejects, key=str) == sorted(
        pq.read_table(tmp_path / "clean" / "rejects.parquet").to_pylist(), key=str
    )
    caplog.clear()
    with caplog.at_level("INFO"):
        shrunk = tokenize_files(corpus[1:], out, params, resume=True)
    assert "left the corpus: from scratch" in caplog.text and shrunk.files == len(corpus) - 1
    assert corpus[0][0] not in read_parts(out / "remi").column("piece_id").to_pylist()
