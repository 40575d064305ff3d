"""The Generate tab's work: sample one piece from the trained generator folder with the
library's sampler (`generator.sampling`), write its MIDI and an audio preview. The model
loads once, on the first request."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import symusic

from midipipe.data.composers import ANY, composer_id_of
from midipipe.demo import audio
from midipipe.generator import COMPOSERS_FILE, TOKENIZER_FILE
from midipipe.generator.corpus import read_table
from midipipe.generator.generate import GenerateParams, sampling_threads, trained_sampling
from midipipe.generator.gpt import GPT, load_model
from midipipe.generator.sampling import SampleConfig, generate, to_midi
from midipipe.tokens import remi

KEEP_S = 3600  # a served page keeps an hour of takes, not every one since it started


def prune(folder: Path, max_age_s: float) -> None:
    cutoff = time.time() - max_age_s
    for path in folder.glob("*"):
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)


@dataclass
class Take:
    midi: Path
    wav: Path
    renderer: str
    stats: dict  # generate()'s, plus composer, notes and the seconds each step took


class Composer:
    """A generator folder (`model.safetensors`, `config.json`, `composers.json`,
    `tokenizer.json`), loaded on first use."""

    def __init__(self, folder: str | Path, sample_rate: int, renderer: str = "auto") -> None:
        self.folder = Path(folder)
        self.sample_rate = sample_rate
        self.renderer = renderer
        self._model: GPT | None = None
        self._tokenizer = None

    def missing(self) -> str | None:
        """Why this folder cannot generate, or None."""
        for name in ("model.safetensors", COMPOSERS_FILE, TOKENIZER_FILE):
            if not (self.folder / name).exists():
                return (
                    f"no generator in {self.folder} ({name} missing; "
                    "train it: `dvc repro train_generator`)"
                )
        return None

    def composers(self) -> list[str]:
        if self.missing():
            return []
        return [c["name"] for c in read_table(self.folder / COMPOSERS_FILE)["composers"]] + [ANY]

    def _load(self) -> tuple[GPT, object]:
        if self._model is None:
            self._tokenizer = remi.load_tokenizer(self.folder / TOKENIZER_FILE)
            self._model = load_model(self.folder, self._tokenizer, "cpu")
        return self._model, self._tokenizer

    def take(self, composer: str, cfg: SampleConfig, out_dir: str | Path) -> Take:
        """Sample, decode to MIDI, render audio into `out_dir`, where takes older than
        `KEEP_S` are deleted first. ValueError for a bad composer or setting."""
        prune(Path(out_dir), KEEP_S)
        reason = self.missing()
        if reason:
            raise FileNotFoundError(reason)
        name, cid = composer_id_of(read_table(self.folder / COMPOSERS_FILE), composer)
        model, tokenizer = self._load()
        trained = trained_sampling(
            self.folder, tokenizer.vocab, GenerateParams.chord_prior, strict=False
        )
        cfg = dataclasses.replace(cfg, **trained)
        t0 = time.perf_counter()
        with sampling_threads(next(model.parameters()).device):
            ids, stats = generate(model, tokenizer, cid, [], cfg)
        t1 = time.perf_counter()
        stem = f"{name.replace(' ', '_')}_seed{cfg.seed}_g{cfg.guidance:g}"
        midi = to_midi(tokenizer, ids, Path(out_dir) / f"{stem}.mid")
        wav = midi.with_suffix(".wav")
        notes = symusic.Score(str(midi)).note_num()
        renderer = audio.render(midi, wav, self.sample_rate, self.renderer) if notes else "none"
        t2 = time.perf_counter()
        stats = {
            **stats,
            "composer": name,
            "notes": int(notes),
            "sample_s": round(t1 - t0, 3),
            "render_s": round(t2 - t1, 3),
        }
        return Take(midi, wav, renderer, stats)
