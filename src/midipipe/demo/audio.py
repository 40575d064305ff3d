"""The audio preview: FluidSynth with a General MIDI soundfont when both are installed
(Debian `fluidsynth`, `fluid-soundfont-gm`), else a plain additive synthesis in NumPy. The
renderer's name goes with the file so the page can say which one was used."""

from __future__ import annotations

import logging
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import symusic

log = logging.getLogger(__name__)

SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
FLUIDSYNTH = "FluidSynth + FluidR3 GM soundfont"
NUMPY = "NumPy additive synthesis"
TIMEOUT_S = 60


def soundfont() -> Path | None:
    return next((Path(p) for p in SOUNDFONTS if Path(p).is_file()), None)


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and soundfont() is not None


def render(midi: str | Path, wav: str | Path, sample_rate: int, renderer: str = "auto") -> str:
    """Write `wav` from `midi` and return the renderer's name. `renderer`: auto | fluidsynth |
    numpy (auto: FluidSynth when available; a FluidSynth failure falls back to NumPy)."""
    if renderer not in ("auto", "fluidsynth", "numpy"):
        raise ValueError(f"renderer must be auto, fluidsynth or numpy, got {renderer!r}")
    if renderer != "numpy" and fluidsynth_available():
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", str(sample_rate), "-F", str(wav)]
        cmd += ["-o", "synth.dynamic-sample-loading=1"]  # only the presets used: 2x faster
        done = subprocess.run(
            [*cmd, str(soundfont()), str(midi)], capture_output=True, timeout=TIMEOUT_S
        )
        if done.returncode == 0 and Path(wav).stat().st_size > 44:
            trim_silence(wav)
            return FLUIDSYNTH
        log.warning("fluidsynth failed (%s): NumPy synthesis instead", done.stderr[-300:])
        why = " (FluidSynth failed)"
    elif renderer == "fluidsynth":
        raise FileNotFoundError("fluidsynth or a General MIDI soundfont is not installed")
    else:
        why = "" if renderer == "numpy" else " (FluidSynth or a GM soundfont not installed)"
    write_wav(wav, synthesize(symusic.Score(str(midi)), sample_rate), sample_rate)
    return NUMPY + why


def synthesize(score: symusic.Score, sample_rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1]: per note a few decaying harmonics with a short attack and
    release; drums as decaying noise bursts."""
    seconds = score.to("second")
    n = int((seconds.end() + 0.5) * sample_rate) + 1
    out = np.zeros(n, np.float32)
    rng = np.random.default_rng(0)
    for track in seconds.tracks:
        for note in track.notes:
            start = int(note.time * sample_rate)
            length = int(min(max(note.duration, 0.05), 4.0) * sample_rate)
            length = min(length + int(0.05 * sample_rate), n - start)
            if length <= 0:
                continue
            t = np.arange(length, dtype=np.float32) / sample_rate
            gain = 0.25 * note.velocity / 127
            if track.is_drum:
                wave_ = rng.standard_normal(length).astype(np.float32) * np.exp(-t * 30)
            else:
                freq = 440.0 * 2 ** ((note.pitch - 69) / 12)
                wave_ = sum(np.sin(2 * np.pi * freq * h * t) / h**1.5 for h in (1, 2, 3)) * np.exp(
                    -t * 2.5
                )
            envelope = np.minimum(1.0, t / 0.005) * np.minimum(
                1.0, (length / sample_rate - t) / 0.05
            )
            out[start : start + length] += gain * wave_ * envelope
    peak = float(np.abs(out).max()) if n else 0.0
    return out / peak * 0.9 if peak > 0.9 else out


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit mono PCM."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def trim_silence(path: str | Path, tail_s: float = 0.5, floor: float = 1e-3) -> None:
    """Cut the silence after the last audible sample, keeping `tail_s`: FluidSynth renders up
    to the file's end-of-track, which a generated piece may place long after its last note."""
    with wave.open(str(path)) as f:
        params, raw = f.getparams(), f.readframes(f.getnframes())
    samples = np.frombuffer(raw, "<i2").reshape(-1, params.nchannels)
    loud = np.flatnonzero(np.abs(samples).max(1) > floor * 32767)
    keep = min(len(samples), (int(loud[-1]) if len(loud) else 0) + int(tail_s * params.framerate))
    if keep < len(samples):
        with wave.open(str(path), "wb") as f:
            f.setparams(params)
            f.writeframes(samples[:keep].tobytes())
