"""Shared fixtures: real-data folders from the environment, and small MIDI files built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import symusic
import torch

from midipipe.generator.gpt import GPT, GPTConfig
from midipipe.tokens.remi import make_tokenizer

# Modules whose shared fixture runs a long chain of subprocesses (the whole DVC DAG): started
# first, so that under pytest-xdist (`make test`) the other workers fill the time around it.
LONG_FIRST = ("test_dvc_workflow.py",)


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch gets its share of the cores (and so do the
    processes it starts): two workers of two threads each on two cores spin against each other."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = max(1, len(os.sched_getaffinity(0)) // int(workers))
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)


def _env_dir(var: str) -> Path:
    value = os.environ.get(var)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{var} is not set to a folder; skipping tests on external data")
    return Path(value)


@pytest.fixture(scope="session")
def external_data() -> Path:
    """../shared/datasets (POP909, Nottingham, VGMIDI, MidiTok's test files), when available."""
    return _env_dir("MIDIPIPE_EXTERNAL_DATA")


@pytest.fixture(scope="session")
def musetok_vectors() -> Path:
    """../shared/musetok-vectors: outputs of the reference MuseTok implementation."""
    return _env_dir("MIDIPIPE_MUSETOK_VECTORS")


def build_midi(
    n_bars: int = 8,
    numerator: int = 4,
    denominator: int = 4,
    pitch: int = 60,
    program: int = 0,
    is_drum: bool = False,
    tpq: int = 480,
    tempo: float = 120.0,
) -> bytes:
    """A real, small MIDI file: a scale-like line of quarter notes and a held bass note per bar."""
    score = symusic.Score(tpq)
    score.time_signatures.append(symusic.TimeSignature(0, numerator, denominator))
    score.tempos.append(symusic.Tempo(0, tempo))
    track = symusic.Track(name="piano", program=program, is_drum=is_drum)
    beat = tpq * 4 // denominator
    bar = beat * numerator
    for b in range(n_bars):
        for k in range(numerator):
            track.notes.append(symusic.Note(b * bar + k * beat, beat, pitch + (b + k) % 12, 80))
        track.notes.append(symusic.Note(b * bar, bar, pitch - 24 + b % 5, 64))
    score.tracks.append(track)
    return score.dumps_midi()


@pytest.fixture
def make_midi(tmp_path):
    """Write `build_midi(**kwargs)` to `tmp_path/<name>` and return its path."""

    def _make(name: str = "piece.mid", folder: Path | None = None, **kwargs) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build_midi(**kwargs))
        return path

    return _make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is faster than two fighting over shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    """The default REMI tokenizer (params' `tokenize.remi` defaults)."""
    return make_tokenizer()


def write_corpus(corpus_dir: Path, pieces: list[tuple[dict, bytes]]) -> list[dict]:
    """Put `(manifest row, MIDI bytes)` pairs in a corpus store (what organize writes) and
    return the rows with the `shard` and `row` that locate their bytes."""
    from midipipe.data import store

    writer = store.StoreWriter(corpus_dir, 0, rows_per_file=1000, rows_per_group=8)
    out = []
    for meta, data in pieces:
        shard, row = writer.add(store.store_row(meta, data))
        out.append({**meta, "shard": shard, "row": row})
    writer.close()
    return out


def tiny_model(tokenizer, context: int = 64) -> GPT:
    """A 2-layer GPT over `tokenizer`'s vocabulary with 4 composer ids, seeded, eval mode."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=len(tokenizer.vocab),
        n_layer=2,
        n_head=2,
        d_model=32,
        d_ff=64,
        context=context,
        n_composers=4,
        dropout=0.0,
    )
    return GPT(cfg).eval()
