"""Stage 10/11: GigaMIDI-shaped rows -> per-bar valence/arousal (resumable, failures recorded),
the Ray engine against the local one, the embedded-corpus export, and the tag statistics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import symusic
import torch
from conftest import build_midi

from midipipe.annotate import analysis
from midipipe.annotate.params import INSTRUMENT_COLUMN, AnnotateParams
from midipipe.annotate.run import annotate
from midipipe.annotate.store import PartStore
from midipipe.core.errors import ParamError
from midipipe.core.io import write_json
from midipipe.emotion import predict_file, regressor, rules_config
from midipipe.emotion.rules import RuleParams, estimate, meter_grid
from midipipe.musetok import checkpoint
from midipipe.musetok.encode import encode_pieces
from midipipe.musetok.events import encode_midi
from midipipe.musetok.model import MuseTok, MuseTokConfig

SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("md5", pa.string()),
        ("music", pa.binary()),
        ("NOMML", pa.list_(pa.int64())),
        (INSTRUMENT_COLUMN, pa.int64()),
        ("music_styles_curated", pa.list_(pa.string())),
        ("music_style_scraped", pa.string()),
        ("title", pa.string()),
        ("artist", pa.string()),
    ]
)


def no_notes_midi() -> bytes:
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.tracks.append(symusic.Track(name="empty", program=0))
    return score.dumps_midi()


def row(music: bytes | None, md5: str | None = None, i: int = 0) -> dict:
    return {
        "split": "train",
        "md5": md5 or (hashlib.md5(music).hexdigest() if music else None),
        "music": music,
        "NOMML": [12 if i % 3 == 0 else 2],
        INSTRUMENT_COLUMN: 2,
        "music_styles_curated": ["Rock"] if i % 2 else ["Pop", "Ballad"],
        "music_style_scraped": "",
        "title": f"song {i}",
        "artist": "band",
    }


GOOD = [
    build_midi(n_bars=2 + i % 5, pitch=48 + 2 * i, numerator=3 if i == 4 else 4, tempo=90 + 10 * i)
    for i in range(8)
]
BAD = {
    "garbage": (b"not a midi file", "BadMidi: not a MIDI file"),
    "truncated": (b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01", "BadMidi: cannot parse MIDI"),
    "no-notes": (no_notes_midi(), "BadMidi: no notes"),
    "null-music": (None, "RowError: no music bytes"),
}
REJECTED = {  # parseable, outside MuseTok's vocabulary: latent estimators fall back on them
    "high-pitch": (build_midi(n_bars=2, pitch=112), "MuseTokReject: invalid pitch value"),
    "seven-eight": (
        build_midi(n_bars=5, numerator=7, denominator=8),
        "MuseTokReject: unsupported event 'Time_Signature_7/8'",
    ),
}


def meter_change_midi() -> bytes:
    """Two bars of 4/4, then 3/4 from a tick that cuts the third 4/4 bar short."""
    score = symusic.Score.from_midi(build_midi(n_bars=6))
    score.time_signatures.append(symusic.TimeSignature(480 * 9, 3, 4))
    return score.dumps_midi()


def dense_bar_midi() -> bytes:
    """Four bars, the second so dense that its MuseTok bar exceeds the 128-token window."""
    score = symusic.Score.from_midi(build_midi(n_bars=4, pitch=60))
    for k in range(64):
        score.tracks[0].notes.append(symusic.Note(1920 + 30 * k, 30, 50 + k % 30, 90))
    return score.dumps_midi()


GOOD.append(meter_change_midi())
GOOD.append(dense_bar_midi())


def giga_rows() -> list[dict]:
    """Good songs with bad rows spread among them (stream order matters for resume)."""
    rows = [row(m, i=i) for i, m in enumerate(GOOD)]
    for k, (name, (music, _)) in enumerate({**BAD, **REJECTED}.items()):
        rows.insert(2 * k + 1, row(music, md5=name, i=k))
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("giga") / "train" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(giga_rows(), schema=SCHEMA), path, row_group_size=3)
    return path


def untrained_mlp(folder: Path, name: str) -> None:
    """A random emotion MLP on input `name`, saved as stage 07 saves a trained one."""
    musetok = MuseTokConfig.cpu_default()
    cfg = regressor.MLPConfig(
        input=name,
        width=regressor.input_width(name, musetok),
        codebook_size=musetok.codebook_size,
        window=1,
        hidden=16,
        dropout=0.0,
    )
    mlp = regressor.EmotionMLP(cfg)
    latent = regressor.latent_of(name)
    if latent in ("quantized", "encoder_out"):  # random latents are small: spread the outputs
        mlp.std[: regressor.input_width(latent, musetok)].fill_(0.05)
    regressor.save(mlp.eval(), folder, {"learned": False, "cue_window": 2})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A random MuseTok, the rule estimator, and a random MLP per input (`mlp`: quantized)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    checkpoint.save(MuseTok(MuseTokConfig.cpu_default()).eval(), root / "musetok")
    write_json(root / "rules" / "config.json", rules_config(RuleParams()))
    out = {"musetok": root / "musetok", "rules": root / "rules", "mlp": root / "quantized"}
    for name in regressor.INPUTS:
        untrained_mlp(root / name, name)
        out[name] = root / name
    untrained_mlp(root / "quantized" / "fallback", "cues")  # as stage 07 trains one beside it
    return out


def params(corpus: Path, models: dict, estimator: str = "rules", **kw) -> AnnotateParams:
    base = dict(
        name="test",
        parquet=str(corpus),
        musetok=str(models["musetok"]),
        emotion=str(models[estimator]),
        workers=1,
        songs_per_part=4,
        read_batch=2,
        batch_size=16,
        device="cpu",
    )
    return AnnotateParams(**{**base, **kw})


@pytest.fixture(scope="module")
def rules_run(corpus, models, tmp_path_factory):
    """One rule-estimator run over the corpus, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("rules") / "out"
    return folder, annotate(params(corpus, models), folder, progress=False)


@pytest.fixture(scope="module")
def mlp_run(corpus, models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mlp") / "out"
    annotate(params(corpus, models, "mlp"), folder, progress=False)
    return folder


def output(folder: Path) -> tuple[list[dict], list[dict]]:
    """Songs and bars of an annotation folder, in a canonical order."""
    songs = sorted(pq.read_table(folder / "songs.parquet").to_pylist(), key=lambda r: r["md5"])
    parts = sorted(folder.glob("part-*.parquet"))
    bars = sorted(
        pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist(),
        key=lambda r: (r["md5"], r["bar"]),
    )
    return songs, bars


def assert_rows_close(got: list[dict], expected: list[dict]) -> None:
    """Equal rows, floats to 1e-5 (batching changes the encoder's rounding)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-5)


def check_consistent(folder: Path) -> None:
    songs, bars = output(folder)
    keys = [r["md5"] for r in songs]
    assert len(keys) == len(set(keys)), "a song is summarised twice"
    pairs = [(r["md5"], r["bar"]) for r in bars]
    assert len(pairs) == len(set(pairs)), "a bar is written twice"
    n_bars = {r["md5"]: r["n_bars"] for r in songs if r["status"] == "ok"}
    per_song: dict[str, int] = {}
    for r in bars:
        per_song[r["md5"]] = per_song.get(r["md5"], 0) + 1
    assert per_song == n_bars
    assert not list(folder.rglob("*.tmp"))


# -- stage 10 ----------------------------------------------------------------------------------


def test_rules_rows_failures_and_metrics(rules_run):
    folder, report = rules_run
    songs, bars = output(folder)
    check_consistent(folder)
    by_key = {r["md5"]: r for r in songs}
    for name, (_, reason) in BAD.items():
        assert by_key[name]["status"] == "failed" and by_key[name]["reason"].startswith(reason)
        assert by_key[name]["valence_mean"] is None
    ok = [r for r in songs if r["status"] == "ok"]
    # the rules need no MuseTok: every parseable song is annotated, any meter, any pitch
    assert len(ok) == len(GOOD) + len(REJECTED) and {r["estimator"] for r in bars} == {"rules"}
    assert all(by_key[name]["status"] == "ok" for name in REJECTED)
    # bars follow the file's time signatures; values are the rule estimate on that grid
    music = GOOD[-2]
    score = symusic.Score.from_midi(music)
    grid = meter_grid(score)
    expected = estimate(score, grid, RuleParams())
    mine = [r for r in bars if r["md5"] == hashlib.md5(music).hexdigest()]
    np.testing.assert_allclose([(r["valence"], r["arousal"]) for r in mine], expected, atol=1e-6)
    # 4/4, 4/4, a 4/4 bar cut at the 3/4 change (tick 4320), then 3/4 bars
    assert [(r["start_tick"], r["end_tick"]) for r in mine[:5]] == [
        (0, 1920),
        (1920, 3840),
        (3840, 4320),
        (4320, 5760),
        (5760, 7200),
    ]
    assert [r["start_s"] for r in mine[:4]] == pytest.approx([0, 2, 4, 4.5])  # 120 bpm
    summary = by_key[hashlib.md5(music).hexdigest()]
    assert summary["n_bars"] == grid.n_bars == len(mine)
    assert summary["valence_mean"] == pytest.approx(expected[:, 0].mean(), abs=1e-6)
    assert summary["arousal_max"] == pytest.approx(expected[:, 1].max(), abs=1e-6)
    m = report.metrics()
    assert m["songs"] == len(GOOD) + len(BAD) + len(REJECTED) and m["songs_failed"] == len(BAD)
    assert m["failed_BadMidi"] == 3 and m["failed_RowError"] == 1 and m["songs_fallback"] == 0
    assert m["estimator"] == "rules" and m["estimator_learned"] is False
    assert m["bars"] == len(bars) and m["bars_per_s"] > 0 and m["seconds_cues"] > 0
    assert m["projected_hours_gigamidi_v2"] > 0 and m["peak_rss_main_mb"] > 0
    meta = {r["md5"]: r for r in pq.read_table(folder / "meta.parquet").to_pylist()}
    assert meta[hashlib.md5(GOOD[1]).hexdigest()]["music_styles_curated"] == ["Rock"]
    assert "music" not in pq.read_schema(folder / "meta.parquet").names


def test_mlp_batched_across_songs_equals_one_song_at_a_time(models, mlp_run, tmp_path):
    songs, bars = output(mlp_run)
    check_consistent(mlp_run)
    by_key = {r["md5"]: r for r in songs}
    encoder = checkpoint.load(models["musetok"])
    mlp = regressor.load(models["mlp"])
    for music in GOOD[:3]:
        (out,) = encode_pieces(encoder, [encode_midi(music)], 256)
        expected = regressor.predict(mlp, out.latents, np.array([0, len(out.latents)]))
        key = hashlib.md5(music).hexdigest()
        got = [(r["valence"], r["arousal"]) for r in bars if r["md5"] == key]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert by_key[key]["estimator"] == "mlp_latents" and by_key[key]["fallback"] is None
    assert np.std([r["valence"] for r in bars]) > 1e-3  # not a constant model
    # songs MuseTok rejects get the cues model beside it, on their own meter's bars
    for name, (music, reason) in REJECTED.items():
        assert by_key[name]["status"] == "ok" and by_key[name]["fallback"].startswith(reason)
        assert by_key[name]["estimator"] == "mlp_cues"
        path = tmp_path / f"{name}.mid"
        path.write_bytes(music)
        expected = predict_file(path, models["mlp"] / "fallback")
        got = [r for r in bars if r["md5"] == name]
        assert {r["estimator"] for r in got} == {"mlp_cues"}
        assert [(r["start_tick"], r["end_tick"]) for r in got] == [
            (r["start_tick"], r["end_tick"]) for r in expected
        ]
        np.testing.assert_allclose(
            [(r["valence"], r["arousal"]) for r in got],
            [(r["valence"], r["arousal"]) for r in expected],
            atol=1e-5,
        )
    # a bar longer than the encoder window takes the cues model, the others keep the latents
    dense = [r for r in bars if r["md5"] == hashlib.md5(GOOD[-1]).hexdigest()]
    assert [r["estimator"] for r in dense] == ["mlp_latents", "mlp_cues", "mlp_latents"] + [
        "mlp_latents"
    ] * (len(dense) - 3)
    summary = by_key[hashlib.md5(GOOD[-1]).hexdigest()]
    assert summary["bars_fallback"] == 1 == summary["bars_truncated"]
    assert summary["fallback"] == "1 bars longer than the encoder window"


@pytest.mark.parametrize("name", ["encoder_out", "codes", "cues", "latents+cues"])
def test_every_mlp_input_annotates_as_predict_file_does(corpus, models, name, tmp_path):
    """Batched annotation of a model on each input gives `predict_file`'s bars; a model on the
    cues alone runs without any MuseTok model."""
    musetok = models["musetok"] if name != "cues" else tmp_path / "no-musetok"
    folder = tmp_path / "out"
    report = annotate(params(corpus, {**models, "musetok": musetok}, name), folder, progress=False)
    check_consistent(folder)
    songs, bars = output(folder)
    estimator = regressor.estimator_of(name)
    dense = hashlib.md5(GOOD[-1]).hexdigest()
    assert {r["estimator"] for r in bars if r["md5"] not in {*REJECTED, dense}} == {estimator}
    # no fallback folder beside these models: the rule estimate stands in for MuseTok
    expected = {"rules" if regressor.latent_of(name) else estimator}
    assert {r["estimator"] for r in bars if r["md5"] in REJECTED} == expected
    assert [r["estimator"] for r in bars if r["md5"] == dense][1] in expected
    assert sum(r["status"] == "ok" for r in songs) == len(GOOD) + len(REJECTED)
    for i, music in enumerate(GOOD[:3]):
        path = tmp_path / f"{i}.mid"
        path.write_bytes(music)
        expected = [(r["valence"], r["arousal"]) for r in predict_file(path, models[name], musetok)]
        key = hashlib.md5(music).hexdigest()
        got = [(r["valence"], r["arousal"]) for r in bars if r["md5"] == key]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.std([r["valence"] for r in bars]) > 1e-3  # not a constant model
    m = report.metrics()
    assert (m["seconds_encoder"] > 0) == (name != "cues")
    assert m["seconds_cues"] > 0  # every estimator's bars come with their cues


class CutStream:
    """Rows that raise after `n` of them, like a dropped connection."""

    def __init__(self, rows: list[dict], n: int):
        self.rows, self.n = rows, n

    def __iter__(self):
        for i, r in enumerate(self.rows):
            if i == self.n:
                raise ConnectionError("connection reset by peer")
            yield r


def test_interrupted_stream_resumes_to_the_uninterrupted_result(corpus, models, tmp_path):
    p = params(corpus, models, songs_per_part=3)
    full = annotate(p, tmp_path / "full", rows=giga_rows(), progress=False)
    assert full.stream_error is None
    cut = annotate(p, tmp_path / "cut", rows=CutStream(giga_rows(), 7), progress=False)
    assert cut.stream_error == "ConnectionError: connection reset by peer"
    state = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert state["complete"] is False and "reset" in state["stream_error"]
    check_consistent(tmp_path / "cut")
    assert len(output(tmp_path / "cut")[0]) == 7  # every row read before the cut is kept
    # a kill between the bars part and its commit record, and during an atomic write
    (tmp_path / "cut" / "part-00042.parquet").write_bytes(b"half a part")
    (tmp_path / "cut" / ".part-00043.parquet.x.tmp").write_bytes(b"")
    again = annotate(p, tmp_path / "cut", rows=giga_rows(), progress=False)
    assert again.skipped_done == 7 and again.songs_new == len(giga_rows()) - 7
    assert not (tmp_path / "cut" / "part-00042.parquet").exists()
    check_consistent(tmp_path / "cut")
    assert output(tmp_path / "cut") == output(tmp_path / "full")
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["complete"] is True
    # nothing left to do: a rerun writes nothing and changes nothing
    assert annotate(p, tmp_path / "cut", rows=giga_rows(), progress=False).songs_new == 0
    assert output(tmp_path / "cut") == output(tmp_path / "full")


def test_limit_counts_stream_rows_and_extends_on_resume(corpus, models, tmp_path):
    annotate(params(corpus, models, limit=4), tmp_path / "a", progress=False)
    assert [r["md5"] for r in pq.read_table(tmp_path / "a" / "songs.parquet").to_pylist()] == [
        r["md5"] for r in giga_rows()[:4]
    ]
    annotate(params(corpus, models, limit=9), tmp_path / "a", progress=False)
    annotate(params(corpus, models, limit=9), tmp_path / "b", progress=False)
    assert output(tmp_path / "a") == output(tmp_path / "b")
    assert len(output(tmp_path / "a")[0]) == 9


def test_resume_does_not_decode_finished_row_groups(corpus, models):
    from midipipe.annotate.rows import open_rows

    rows = giga_rows()
    done = {r["md5"] for r in rows[:4]}  # row group 0 (rows 0-2) and one row of group 1
    got = list(open_rows(params(corpus, models), done))
    assert got[:3] == [{"md5": r["md5"]} for r in rows[:3]]
    assert [r["md5"] for r in got] == [r["md5"] for r in rows]
    assert got[3]["music"] == rows[3]["music"] and got[3]["title"] == rows[3]["title"]


def test_streaming_branch_and_rows_missing_columns(corpus, models, tmp_path, monkeypatch):
    import datasets

    rows = giga_rows()
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        part = [r for r in rows if r["split"] == kwargs["split"]]
        return datasets.Dataset.from_list(part).to_iterable_dataset(num_shards=min(3, len(part)))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows[-1]["split"] = "test"  # two splits, streamed one after the other
    p = params(
        corpus,
        models,
        parquet=None,
        hf_name="Metacreation/GigaMIDI",
        revision="abc",
        splits=["train", "test"],
        stream_workers=2,
    )
    annotate(p, tmp_path / "hub", progress=False)  # 3 shards read by 2 processes
    expected = {"revision": "abc", "streaming": True}
    assert calls == [
        ("Metacreation/GigaMIDI", "v2.0.0", {"split": s, **expected}) for s in ("train", "test")
    ]
    annotate(params(corpus, models), tmp_path / "local", progress=False)
    assert output(tmp_path / "hub") == output(tmp_path / "local")

    odd = [
        {"md5": "no-music-column", "title": "x"},
        {"title": "nothing at all"},
        {"music": GOOD[0]},
    ]  # no md5: keyed by the md5 of its bytes
    annotate(params(corpus, models), tmp_path / "odd", rows=odd, progress=False)
    songs = {r["md5"]: r for r in output(tmp_path / "odd")[0]}
    assert songs["no-music-column"]["reason"] == "RowError: missing column 'music'"
    assert songs[hashlib.md5(GOOD[0]).hexdigest()]["status"] == "ok"
    (other,) = [k for k in songs if k.startswith("row-")]
    assert songs[other]["status"] == "failed"


def test_other_models_code_or_params_start_afresh_and_say_so(corpus, models, tmp_path, monkeypatch):
    from midipipe.annotate import annotator

    out = tmp_path / "out"
    annotate(params(corpus, models, limit=3), out, progress=False)
    report = annotate(params(corpus, models, "mlp", limit=3), out, progress=False)
    assert "estimator" in report.restarted and "models_sha256" in report.restarted
    songs, bars = output(out)
    assert {r["estimator"] for r in songs} == {"mlp_latents"} == {r["estimator"] for r in bars}
    assert len(songs) == 3
    same = annotate(params(corpus, models, "mlp", limit=3), out, progress=False)
    assert same.restarted == [] and same.skipped_done == 3
    p = params(corpus, models, "mlp", limit=3, max_notes=10_000)
    changed = annotate(p, out, progress=False)
    assert changed.restarted == ["params.max_notes"] and changed.songs_new == 3
    assert changed.metrics()["started_afresh_because"] == "params.max_notes"
    # an edit to the code of the annotation path (rules.py, the encoder...) changes its hash
    monkeypatch.setattr(annotator, "code_version", lambda *roots: "edited")
    assert annotate(p, out, progress=False).restarted == ["code_sha256"]
    with pytest.raises(ParamError, match="exactly one of parquet"):
        params(corpus, models, hf_name="x")
    with pytest.raises(ParamError, match="engine"):
        params(corpus, models, engine="spark")


def test_part_store_drops_duplicates(tmp_path):
    from midipipe.annotate.annotator import SongResult

    store = PartStore(tmp_path, {"x": 1})
    va, bounds, start_s = np.zeros((2, 2), np.float32), np.arange(3.0), np.zeros(2, np.float32)

    def ok(key):
        return SongResult(key, None, "rules", va, bounds, start_s)

    assert store.commit([ok("a"), ok("a")]) == (1, 2)
    assert store.commit([ok("a"), SongResult("b", "BadMidi: x")]) == (1, 0)
    assert PartStore(tmp_path, {"x": 1}).done == {"a", "b"}
    assert PartStore(tmp_path, {"x": 2}).done == set()  # another fingerprint: afresh


def test_ray_actor_gives_the_local_rows_without_a_cluster(corpus, models, mlp_run, tmp_path):
    pytest.importorskip("ray")
    from midipipe.annotate.ray_engine import AnnotateActor, _results

    p = params(corpus, models, "mlp")
    first = hashlib.md5(GOOD[0]).hexdigest()
    actor = AnnotateActor(p, done={first})
    store = PartStore(tmp_path / "actor", {})
    table = pq.read_table(corpus)
    skipped = 0
    for start in range(0, table.num_rows, 3):
        results, n, seconds, _ = _results(actor(table.slice(start, 3)))
        skipped += n
        store.commit(results)
    store.finalize({})
    assert skipped == 1 and seconds["encoder"] > 0
    local, got = output(mlp_run), output(tmp_path / "actor")
    assert_rows_close(got[0], [r for r in local[0] if r["md5"] != first])
    assert_rows_close(got[1], [r for r in local[1] if r["md5"] != first])


def faulty_corpus(folder: Path) -> Path:
    """Good songs, one bad file, one that hangs its parser and one that crashes it (through
    the `data.midi.FAULT_ENV` test hook, set by the caller)."""
    rows = [row(m, i=i) for i, m in enumerate(GOOD[:5])]
    rows.insert(1, row(GOOD[5], md5="hang-song"))
    rows.insert(3, row(GOOD[6], md5="crash-song"))
    rows.insert(4, row(BAD["garbage"][0], md5="garbage"))
    path = folder / "faulty.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=4)
    return path


FAULTS = "hang-song:hang,crash-song:abort"


def test_hang_and_crash_fail_one_song_in_both_engines_and_retry_once(models, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from midipipe.annotate.ray_engine import AnnotateActor, _results
    from midipipe.data.midi import FAULT_ENV

    corpus = faulty_corpus(tmp_path)
    monkeypatch.setenv(FAULT_ENV, FAULTS)
    p = params(corpus, models, "mlp", timeout_s=1, read_batch=4)
    local = annotate(p, tmp_path / "local", progress=False)
    songs = {r["md5"]: r for r in output(tmp_path / "local")[0]}
    assert songs["hang-song"]["reason"] == "timed out after 1 s"
    assert songs["crash-song"]["reason"].startswith("worker crashed")
    assert songs["garbage"]["reason"].startswith("BadMidi")
    assert sum(r["status"] == "ok" for r in songs.values()) == 5
    assert local.metrics()["failed_Timeout"] == 1 and local.metrics()["failed_WorkerCrash"] == 1
    # the Ray actor parses in its own pool: the same failures, the same rows for the rest
    actor = AnnotateActor(p, done=set(), context="fork")
    store = PartStore(tmp_path / "actor", {})
    table = pq.read_table(corpus)
    for start in range(0, table.num_rows, 4):
        store.commit(_results(actor(table.slice(start, 4)))[0])
    store.finalize({})
    got, want = output(tmp_path / "actor"), output(tmp_path / "local")
    assert [(r["md5"], r["reason"]) for r in got[0]] == [(r["md5"], r["reason"]) for r in want[0]]
    assert_rows_close(got[1], want[1])
    # resume retries the transient failures once (the crash is gone, the hang is not) ...
    monkeypatch.setenv(FAULT_ENV, "hang-song:hang")
    again = annotate(p, tmp_path / "local", progress=False)
    assert again.retried == 2 and again.skipped_done == 6
    check_consistent(tmp_path / "local")
    songs = {r["md5"]: r for r in output(tmp_path / "local")[0]}
    assert (songs["crash-song"]["status"], songs["crash-song"]["attempts"]) == ("ok", 2)
    assert (songs["hang-song"]["status"], songs["hang-song"]["attempts"]) == ("failed", 2)
    assert songs["garbage"]["attempts"] == 1  # permanent: never retried
    # ... and only once
    third = annotate(p, tmp_path / "local", progress=False)
    assert third.retried == 0 and third.skipped_done == 8 and third.songs_new == 0


@pytest.mark.slow  # a local Ray cluster takes ~20 s to start and ~20 s per run on 2 cores
def test_ray_engine_equals_local_engine(corpus, models, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from midipipe.data.midi import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, FAULTS)  # before the cluster starts: its workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # a hang and a crash in the actors' spawned parse pools: recorded, the rest equal
        faulty = faulty_corpus(tmp_path)
        for engine in ("local", "ray"):
            p = params(faulty, models, "mlp", timeout_s=5, engine=engine, ray_actors=1)
            annotate(p, tmp_path / f"faulty-{engine}", progress=False)
        (ls, lb), (rs, rb) = output(tmp_path / "faulty-local"), output(tmp_path / "faulty-ray")
        assert [(r["md5"], r["reason"]) for r in ls] == [(r["md5"], r["reason"]) for r in rs]
        assert {r["md5"]: r["reason"][:14] for r in rs if r["status"] == "failed"} == {
            "hang-song": "timed out afte",
            "crash-song": "worker crashed",
            "garbage": "BadMidi: not a",
        }
        assert_rows_close(rb, lb)
        for estimator in ("rules", "mlp"):
            local = tmp_path / f"local-{estimator}"
            annotate(params(corpus, models, estimator, limit=11), local, progress=False)
            p = params(corpus, models, estimator, limit=11, engine="ray", ray_actors=1)
            report = annotate(p, tmp_path / f"ray-{estimator}", progress=False)
            assert report.stream_error is None and report.engine == "ray"
            check_consistent(tmp_path / f"ray-{estimator}")
            (ls, lb), (rs, rb) = output(local), output(tmp_path / f"ray-{estimator}")
            assert [r["md5"] for r in ls] == [r["md5"] for r in rs]
            assert [(r["status"], r["reason"], r["n_bars"]) for r in ls] == [
                (r["status"], r["reason"], r["n_bars"]) for r in rs
            ]
            assert [(r["md5"], r["bar"]) for r in lb] == [(r["md5"], r["bar"]) for r in rb]
            np.testing.assert_allclose(
                [r["valence"] for r in lb], [r["valence"] for r in rb], atol=1e-4
            )
        # resume: a larger limit only adds the new rows
        p = params(corpus, models, limit=13, engine="ray", ray_actors=1)
        again = annotate(p, tmp_path / "ray-rules", progress=False)
        assert again.skipped_done == 11 and again.songs_new == 2
    finally:
        ray.shutdown()


# -- the embedded corpus as GigaMIDI -----------------------------------------------------------


def test_the_corpus_store_is_gigamidi_parquet_for_annotate(models, tmp_path):
    from midipipe.core.params import Params, build
    from midipipe.data.organize import organize

    lab = tmp_path / "lab" / "bach"
    lab.mkdir(parents=True)
    for i, music in enumerate(GOOD[:3] + [b"junk"]):
        (lab / f"bwv{i}.mid").write_bytes(music)
    spec = {"kind": "folder", "name": "lab", "path": str(lab.parent), "composer_from": "subfolder"}
    organize(build(Params, {"data": {"sources": [spec]}, "organize": {"workers": 1}}), tmp_path)
    table = {r["md5"]: r for r in pq.read_table(tmp_path / "corpus").to_pylist()}
    first = table[hashlib.md5(GOOD[0]).hexdigest()]
    assert first["music"] == GOOD[0] and first["artist"] == "bach" and first["title"] == "bwv0"
    assert first["split"] in ("train", "validation", "test")
    assert first[INSTRUMENT_COLUMN] == 2 and first["total_notes"] > 0
    assert table[hashlib.md5(b"junk").hexdigest()][INSTRUMENT_COLUMN] is None
    p = params(tmp_path / "corpus", models)  # a folder of Parquet files, as GigaMIDI ships
    report = annotate(p, tmp_path / "ann", progress=False)
    assert report.metrics()["songs_ok"] == 3 and report.metrics()["songs_failed"] == 1


# -- stage 11 ----------------------------------------------------------------------------------


def synthetic(n: int, shift: float, seed: int = 0) -> analysis.Songs:
    """Songs tagged rock/pop/jazz (jazz shifted by `shift` in valence), a few with two tags."""
    rng = np.random.default_rng(seed)
    tags = ["rock", "pop", "jazz"] * n
    values = rng.normal(0, 0.2, (3 * n, 2))
    values[np.array(tags) == "jazz", 0] += shift
    md5 = [f"s{i}" for i in range(3 * n)]
    songs = analysis.Songs(
        md5,
        values,
        np.full(3 * n, 8),
        "rules",
        {"songs": 3 * n, "songs_ok": 3 * n, "songs_failed": 0, "bars": 24 * n},
    )
    meta = {
        k: {
            "md5": k,
            "music_styles_curated": [t] + (["pop"] if i % 10 == 0 else []),
            INSTRUMENT_COLUMN: i % 3,
            "NOMML": [12] if i % 2 else [3],
        }
        for i, (k, t) in enumerate(zip(md5, tags, strict=True))
    }
    return songs, meta


def test_kruskal_finds_shifted_tags_and_not_equal_ones():
    songs, meta = synthetic(60, shift=0.5)
    m = analysis.analyze(songs, meta, analysis.AnalyzeParams(min_songs=10)).metrics
    assert m["curated_valence_kruskal_p"] < 1e-6 and m["curated_valence_epsilon2"] > 0.3
    assert m["curated_arousal_kruskal_p"] > 1e-3  # arousal was not shifted
    assert m["curated_tags_tested"] == 3 and m["curated_test_songs"] < 180  # 2-tag songs left out
    assert m["estimator"] == "rules" and m["estimator_learned"] is False
    assert "rule-based" in m["estimator_note"]
    assert m["instrument_tags"] == 3 and m["expressive_tags"] == 2
    assert m["curated_valence_tags_differing"] >= 1 and m["curated_valence_kruskal_neglog10_p"] > 6
    songs, meta = synthetic(60, shift=0.0, seed=1)
    result = analysis.analyze(songs, meta, analysis.AnalyzeParams(min_songs=10))
    assert result.metrics["curated_valence_kruskal_p"] > 1e-3
    jazz = next(r for r in result.tags if r["source"] == "curated" and r["tag"] == "jazz")
    assert (
        jazz["songs"] == 60
        and jazz["valence_ci_low"] < jazz["valence_mean"] < jazz["valence_ci_high"]
    )
    assert "jazz" not in [
        t["tag"] for t in result.tags if t.get("valence_vs_rest_p_holm", 1) < 0.01
    ]
    pair = next(r for r in result.pairs if r["axis"] == "valence")
    assert -1 <= pair["cliffs_delta"] <= 1 and pair["p"] <= pair["p_holm"] <= 1


def test_small_statistics_helpers():
    assert analysis.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    mean, std, lo, hi = analysis.mean_ci(np.array([1.0, 2.0, 3.0]))
    assert (mean, std) == (2.0, 1.0) and hi - mean == pytest.approx(4.302653 / np.sqrt(3))
    assert np.isnan(analysis.mean_ci(np.array([1.0]))[2])
    assert analysis.tags_of("curated", ["Soft Rock", "soft rock", ""]) == ["soft-rock"]
    assert analysis.tags_of("scraped", "Hip Hop/Rap") == ["hip-hop-rap"]
    assert analysis.tags_of("instrument", 0) == ["drums-only"]
    assert analysis.tags_of("expressive", [2, 12]) == ["expressive"]
    assert analysis.tags_of("expressive", []) == []


def test_analyze_run_writes_metrics_csvs_and_plots(rules_run, tmp_path):
    m = analysis.run(rules_run[0], analysis.AnalyzeParams(min_songs=2), tmp_path / "metrics")
    out = tmp_path / "metrics"
    assert json.loads((out / "analysis.json").read_text()) == pytest.approx(m, abs=1e-5)
    n_ok = len(GOOD) + len(REJECTED)
    assert m["songs_ok"] == n_ok and m["songs_with_metadata"] == n_ok
    assert m["estimator"] == "rules" and "not learned" in m["estimator_note"]
    # pop and ballad songs carry both tags: rock alone is exclusive, too few groups to test
    assert m["curated_tags"] == 3 and "curated_valence_kruskal_p" not in m
    assert m["expressive_tags_tested"] == 2 and 0 <= m["expressive_valence_kruskal_p"] <= 1
    assert m["annotations_complete"] is True
    for name in ("analysis_by_tag.png", "analysis_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "analysis_tags.csv").read_text().startswith("source,tag,songs,valence_mean")
    curves = (out / "analysis_curves.csv").read_text().splitlines()
    assert curves[0] == "piece,md5,bar,estimator,valence,arousal" and len(curves) > 8
