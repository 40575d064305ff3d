"""`midipipe demo`: the page's pieces (analysis, bad input, audio renderers, generation) and
the page itself in headless Chromium over tiny models trained here through the library."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
import symusic

from midipipe.cli import build_parser
from midipipe.core.errors import ParamError
from midipipe.core.io import write_rows
from midipipe.core.params import Params, TrainParams, build, merged_train
from midipipe.data import composers
from midipipe.data.organize import MANIFEST_SCHEMA
from midipipe.demo import DemoParams, audio, load_params
from midipipe.demo.analyse import Analyser, quadrant
from midipipe.demo.app import emotion_outputs
from midipipe.demo.compose import Composer, prune
from midipipe.demo.examples import write_examples
from midipipe.emotion import regressor
from midipipe.emotion.rules import CUE_COLUMNS
from midipipe.generator import train as gen_train
from midipipe.generator.sampling import SampleConfig
from midipipe.genre.hier_train import train_hier
from midipipe.genre.params import GenreHierParams, GenreParams
from midipipe.genre.phrase_train import train_phrase
from midipipe.tokens.remi import encode, make_tokenizer
from midipipe.tokens.shards import TOKENS_SCHEMA
from tests.conftest import build_midi, write_corpus

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "outputs" / "demo"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# two composers whose styles differ plainly: the phrase model reads `composer`
STYLES = {
    "alpha": dict(pitch=48, program=0, tempo=90.0),
    "beta": dict(pitch=76, program=40, numerator=3, tempo=150.0),
}
TAGS = {"alpha": ["calm", "piano"], "beta": ["lively", "strings"]}
GENERATOR = {
    "context": 64,
    "max_windows": 8,
    "eval_windows": 4,
    "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "d_ff": 64, "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "precision": "fp32"},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def build_models(root: Path) -> Path:
    """models/genre_phrase, genre_hier and generator trained in seconds on 16 hand-built songs
    of two composers; no emotion model (the rule estimate)."""
    tokenizer = make_tokenizer()
    tokens_dir = root / "data" / "tokens"
    tokens_dir.mkdir(parents=True)
    tokenizer.save(tokens_dir)
    manifest, tokens = [], []
    for name, kw in STYLES.items():
        for k in range(8):
            pid, data = f"{name}{k:02d}", build_midi(n_bars=12, **kw)
            ids, bars = encode(tokenizer, symusic.Score.from_midi(data))
            tokens.append({"piece_id": pid, "ids": ids.tolist(), "bar_starts": bars.tolist()})
            split = "test" if k == 0 else "valid" if k == 1 else "train"
            manifest.append(
                (
                    {
                        "piece_id": pid,
                        "song_id": f"lab:{pid}",
                        "split": split,
                        "composer": name,
                        "period": name,
                        "genres": TAGS[name],
                    },
                    data,
                )
            )
    manifest = write_corpus(root / "data" / "corpus", manifest)
    write_rows(tokens_dir / "part-00000.parquet", tokens, TOKENS_SCHEMA)
    write_rows(root / "data" / "manifest.parquet", manifest, MANIFEST_SCHEMA)
    table = composers.bucket([r["composer"] for r in manifest], min_pieces=2)
    (root / "data" / "composers.json").write_text(__import__("json").dumps(table))
    out = root / "models"
    train_phrase(
        GenreParams(
            label="composer",
            min_class_pieces=2,
            patience=2,
            max_phrases_per_piece=2,
            model={"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64},
        ),
        TrainParams(lr=5e-3, batch_size=8, epochs=3, device="cpu", precision="fp32"),
        tokens_dir,
        root / "data" / "manifest.parquet",
        out / "genre_phrase",
        root / "ckpt_phrase",
        root / "data" / "corpus",
        root / "no_latents",
    )
    p = build(gen_train.GeneratorParams, GENERATOR, "generator")
    gen_train.train(
        p,
        merged_train(Params(), p.train),
        tokens_dir,
        root / "data" / "manifest.parquet",
        root / "data" / "composers.json",
        out / "generator",
        root / "ckpt_generator",
    )
    train_hier(
        GenreHierParams(min_tag_pieces=2, patience=2, d_attn=16, max_chunks=2),
        TrainParams(lr=1e-2, batch_size=4, epochs=3, device="cpu", precision="fp32"),
        tokens_dir,
        root / "data" / "manifest.parquet",
        out / "genre_hier",
        root / "ckpt_hier",
        out / "generator",  # the project's generator as the frozen LM, as stage 06's default
        corpus_dir=root / "data" / "corpus",
        latents_dir=None,
    )
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return build_models(tmp_path_factory.mktemp("demo_project"))


@pytest.fixture(scope="module")
def analyser(models) -> Analyser:
    return Analyser(models, DemoParams())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- analysis and bad input ------------------------------------------------------------------


def test_analysis_uses_the_models(analyser, tmp_path):
    song = write(tmp_path / "song.mid", build_midi(n_bars=12, **STYLES["beta"]))
    a = analyser.analyse(song, top_k=1)
    assert a.error is None and a.facts["bars"] == 12 and a.facts["meters"] == "3/4"
    assert a.facts["tempo (bpm)"] == "150"
    phrase = a.genre["phrase"]
    assert phrase["label"] == "composer" and phrase["prediction"] in ("alpha", "beta")
    assert set(phrase["probabilities"]) == {"alpha", "beta"} and len(phrase["top_k"]) == 1
    hier = a.genre["hier"]
    assert set(hier["probabilities"]) == {"calm", "piano", "lively", "strings"}
    assert len(a.emotion) == 12 and {r["estimator"] for r in a.emotion} == {"rules"}


def test_a_missing_model_is_named_not_raised(models, tmp_path):
    shutil.copytree(models / "genre_phrase", tmp_path / "genre_phrase")
    a = Analyser(tmp_path, DemoParams())
    assert a.genre_model("hier") == (
        f"no hier genre model in {tmp_path / 'genre_hier'} (train it: `dvc repro train_genre_hier`)"
    )
    got = a.analyse(write(tmp_path / "s.mid", build_midi(n_bars=8)))
    assert (
        "prediction" in got.genre["phrase"] and "no hier genre model" in got.genre["hier"]["error"]
    )


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.mid", b"", "empty file"),
        ("text.mid", b"hello, not music", "not a MIDI file"),
        ("cut.mid", build_midi()[:30], "cannot parse MIDI"),
        ("huge.mid", build_midi(n_bars=400), "above the 0.001 MB limit"),
    ],
)
def test_bad_files_get_a_reason_that_names_them(models, tmp_path, name, data, reason):
    a = Analyser(models, DemoParams(max_upload_mb=0.001)).analyse(write(tmp_path / name, data))
    assert a.error.startswith(name) and reason in a.error and not a.genre


def test_too_many_notes_and_too_short_are_said_plainly(models, analyser, tmp_path):
    dense = write(tmp_path / "dense.mid", build_midi(n_bars=40))
    a = Analyser(models, DemoParams(max_notes=100)).analyse(dense)
    assert "too many notes: 200 > max_notes 100" in a.error
    short = analyser.analyse(write(tmp_path / "short.mid", build_midi(n_bars=2)))
    assert (
        short.error is None
        and "too short to classify: 2 bars, 4 needed" in (short.genre["phrase"]["error"])
    )


def test_quadrant_of_the_mean_and_shares_per_bar():
    rows = [{"valence": v, "arousal": a} for v, a in [(0.5, 0.5), (0.4, -0.1), (-0.2, 0.3)]]
    name, shares = quadrant(rows)
    assert name.startswith("Q1") and sorted(round(s, 3) for s in shares.values()) == [
        0.0,
        0.333,
        0.333,
        0.333,
    ]


def test_examples_are_written_and_contrast(analyser, tmp_path):
    bright, dark = write_examples(tmp_path)
    mean = {
        p.name: [sum(r[k] for r in rows) / len(rows) for k in ("valence", "arousal")]
        for p in (bright, dark)
        for rows in [analyser.analyse(p).emotion]
    }
    assert mean[bright.name][0] > mean[dark.name][0] and mean[bright.name][1] > mean[dark.name][1]


# -- audio and generation --------------------------------------------------------------------


def read_wav(path: Path) -> tuple[int, int]:
    with wave.open(str(path)) as f:
        return f.getframerate(), f.getnframes()


def test_numpy_renderer_writes_the_notes_length(tmp_path):
    midi = write(tmp_path / "a.mid", build_midi(n_bars=4, tempo=120.0))  # 8 s
    assert audio.render(midi, tmp_path / "a.wav", 16000, "numpy") == audio.NUMPY
    rate, frames = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and 8.0 <= frames / rate <= 9.0


@pytest.mark.skipif(not audio.fluidsynth_available(), reason="fluidsynth or soundfont absent")
def test_fluidsynth_renderer(tmp_path):
    midi = write(tmp_path / "a.mid", build_midi(n_bars=4, tempo=120.0))
    assert audio.render(midi, tmp_path / "a.wav", 22050) == audio.FLUIDSYNTH
    rate, frames = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and frames / rate >= 8.0


def test_trailing_silence_is_cut(tmp_path):
    rate, tone = 8000, np.sin(np.arange(8000) / 5).astype(np.float32) * 0.5
    audio.write_wav(tmp_path / "a.wav", np.concatenate([tone, np.zeros(5 * rate)]), rate)
    audio.trim_silence(tmp_path / "a.wav", tail_s=0.5)
    assert read_wav(tmp_path / "a.wav") == (rate, 8000 + 4000 - 1)


def test_without_fluidsynth_auto_falls_back_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "soundfont", lambda: None)
    midi = write(tmp_path / "a.mid", build_midi(n_bars=2))
    label = audio.render(midi, tmp_path / "a.wav", 16000)
    assert label.startswith(audio.NUMPY) and "not installed" in label
    with pytest.raises(FileNotFoundError, match="not installed"):
        audio.render(midi, tmp_path / "b.wav", 16000, "fluidsynth")


def test_composer_takes_and_refuses(models, tmp_path):
    composer = Composer(models / "generator", 16000, renderer="numpy")
    assert composer.composers() == ["alpha", "beta", "any"]
    cfg = SampleConfig(max_tokens=64, min_tokens=64, seed=3)
    take = composer.take("beta", cfg, tmp_path)
    assert take.stats["tokens"] == 64 and take.midi.exists() and take.renderer == audio.NUMPY
    assert symusic.Score(str(take.midi)).note_num() == take.stats["notes"]
    assert take.stats["notes"] == 0 or read_wav(take.wav)[1] > 0
    with pytest.raises(ValueError, match="unknown composer 'nobody'; known: alpha, beta, any"):
        composer.take("nobody", cfg, tmp_path)
    gone = Composer(tmp_path / "nothing", 16000)
    assert "no generator in" in gone.missing() and gone.composers() == []


# -- params and command line -----------------------------------------------------------------


def test_demo_params_are_checked_by_key(tmp_path):
    assert load_params(ROOT / "params.yaml") == DemoParams()  # the file states the defaults
    assert load_params(tmp_path / "absent.yaml") == DemoParams()
    with pytest.raises(ParamError, match="demo.max_upload_mb: must be > 0"):
        DemoParams(max_upload_mb=0)
    bad = write(tmp_path / "params.yaml", b"demo: {top_k: many}\n")
    with pytest.raises(ParamError, match="demo.top_k: expected int"):
        load_params(bad)


def test_cli_demo_arguments():
    args = build_parser().parse_args(["demo", "--port", "8000", "--models", "elsewhere"])
    assert (args.host, args.port, args.models) == ("127.0.0.1", 8000, "elsewhere")


# -- the page in a real browser --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOCAL = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(scope="module")
def outside_calls():
    """Connections this process tries to anything but the loopback: refused and recorded."""
    tried, connect = [], socket.socket.connect

    def local_only(sock, address):
        if isinstance(address, tuple) and address[0] not in LOCAL:
            tried.append(address)
            raise OSError(f"the demo test is offline: {address}")
        return connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", local_only)
        yield tried


@pytest.fixture(scope="module")
def server(models, outside_calls):
    """The page on a free local port, in this process (the models are already imported)."""
    from midipipe.demo.app import serve

    port = free_port()
    page = serve(models, DemoParams(max_upload_mb=1.0), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "chromium and chromedriver are not installed (apt-get install chromium "
            "chromium-driver; .ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1400,1700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def text_of(driver, element_id: str, wait_for: str, timeout: float = 30) -> str:
    """The element's text once it contains `wait_for`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        text = d.find_element(By.ID, element_id).text
        return text if wait_for in text else False

    return WebDriverWait(driver, timeout).until(ready)


def upload(driver, path: Path) -> None:
    """Clear the file box if it holds a file, then choose `path` in it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for clear in driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label=Clear]"):
        clear.click()
    box = WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]")
    )
    box[0].send_keys(str(path))


def test_the_page_in_chromium(server, browser, analyser, outside_calls, tmp_path):
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(server)
    bright = write_examples(tmp_path)[0]
    expected = analyser.analyse(bright)

    # a good file: the genre chart, the curve and its per-bar values reach the page
    upload(browser, bright)
    text_of(browser, "status", "Analysed")
    chart = browser.find_element(By.ID, "genre-phrase").text
    lines = chart.splitlines()  # the block label, the top class, then (class, "NN%") pairs
    shown = {lines[i - 1]: lines[i] for i in range(1, len(lines)) if lines[i].endswith("%")}
    want = expected.genre["phrase"]["probabilities"]
    assert {k: float(v.rstrip("%")) for k, v in shown.items()} == pytest.approx(
        {k: 100 * v for k, v in want.items()}, abs=0.51
    )
    valence = sum(r["valence"] for r in expected.emotion) / len(expected.emotion)
    emotion = text_of(browser, "emotion", "Estimator: rules")
    assert f"{len(expected.emotion)} bars; valence mean {valence:+.2f}" in emotion
    assert browser.find_elements(By.CSS_SELECTOR, "#curves img, #roll img")
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Per-bar" in b.text).click()
    cells = text_of(browser, "bars", "arousal").splitlines()[4:]  # after the header
    want = [
        v for r in expected.emotion for v in (r["bar"], r["start_s"], r["valence"], r["arousal"])
    ]
    assert [float(c) for c in cells] == pytest.approx(want, abs=6e-4)
    hier = browser.find_element(By.ID, "genre-hier").text
    assert "tag probabilities (hierarchical model)" in hier and "%" in hier
    browser.save_screenshot(str(SCREENSHOTS / "analyse.png"))

    # a corrupted file: the reason in the page, and the server still answers
    broken = write(tmp_path / "broken.mid", b"MThd" + bytes(range(40)))
    upload(browser, broken)
    assert "broken.mid: cannot parse MIDI" in text_of(browser, "status", "⚠")
    browser.save_screenshot(str(SCREENSHOTS / "analyse_error.png"))
    upload(browser, bright)
    text_of(browser, "status", "Analysed")

    # a short generation: a MIDI file with notes and a WAV that plays
    next(
        t
        for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")
        if t.text == "Generate"
    ).click()
    length = browser.find_element(By.CSS_SELECTOR, "#length input[type=number]")
    length.clear()
    length.send_keys("128\t")
    browser.find_element(By.ID, "generate-button").click()
    status = text_of(browser, "gen-status", "Audio renderer")
    assert "128 tokens" in status
    links = {
        Path(a.get_attribute("download")).suffix: a.get_attribute("href")
        for a in browser.find_elements(By.CSS_SELECTOR, "#audio a[download], #midi a[download]")
    }
    wav, midi = tmp_path / "take.wav", tmp_path / "take.mid"
    wav.write_bytes(urllib.request.urlopen(links[".wav"], timeout=10).read())
    midi.write_bytes(urllib.request.urlopen(links[".mid"], timeout=10).read())
    notes = symusic.Score(str(midi)).note_num()
    assert f"{notes} notes" in status and notes > 0
    rate, frames = read_wav(wav)
    assert frames / rate > 0.5
    browser.save_screenshot(str(SCREENSHOTS / "generate.png"))

    # uploads: only in the page's temporary folder; above the limit, refused by the server
    uploads = Path(os.environ["GRADIO_TEMP_DIR"])
    assert uploads.is_relative_to(tempfile.gettempdir()) and list(uploads.rglob("broken.mid"))
    import httpx

    big = build_midi() + bytes(2**20)  # 1 MB over the limit
    for data, status in ((big, 413), (build_midi(), 200)):
        files = {"files": ("song.mid", data, "audio/midi")}
        answer = httpx.post(f"{server}gradio_api/upload", files=files, timeout=30)
        assert answer.status_code == status, answer.text

    # offline: the page loads nothing from elsewhere, and the server called out to no one
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(u.startswith((server, "data:", "blob:")) for u in loaded), loaded
    assert outside_calls == []


def emotion_model(models: Path, input_name: str) -> Path:
    """An untrained emotion MLP folder (`regressor.save`'s layout)."""
    width = len(CUE_COLUMNS) + (64 if input_name != "cues" else 0)
    mlp = regressor.EmotionMLP(regressor.MLPConfig(input=input_name, width=width, window=2))
    regressor.save(mlp, models / "emotion", {"cue_window": 2})
    return models


def test_learned_emotion_gives_the_quadrant(tmp_path):
    models = emotion_model(tmp_path, "cues")
    a = Analyser(models, DemoParams()).analyse(write(tmp_path / "s.mid", build_midi(n_bars=6)))
    assert {r["estimator"] for r in a.emotion} == {"mlp_cues"} and a.emotion_note is None
    _, text, table = emotion_outputs(a)
    assert "Estimator: **mlp_cues** (MLP on the rule cues (learned))" in text
    assert "Quadrant: **Q" in text and len(table) == 6


def test_rules_stand_in_when_the_learned_model_cannot_read(tmp_path):
    models = emotion_model(tmp_path, "latents+cues")  # and no models/musetok
    a = Analyser(models, DemoParams()).analyse(write(tmp_path / "s.mid", build_midi(n_bars=6)))
    assert {r["estimator"] for r in a.emotion} == {"rules"}
    assert "the learned model cannot read this file" in a.emotion_note
    _, text, _ = emotion_outputs(a)
    assert text.startswith("The rule-based estimate stands in") and "Quadrant" not in text


def test_old_takes_are_pruned(tmp_path):
    old, new = write(tmp_path / "old.wav", b"x"), write(tmp_path / "new.wav", b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    prune(tmp_path, 3600)
    assert not old.exists() and new.exists()
