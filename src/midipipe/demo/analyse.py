"""The Analyse tab's work on one uploaded file, through the library's own predictors
(`genre.predict`, `emotion.predict_file`, `data.midi.load_score`). A model that is missing or
does not load becomes a sentence in its panel; the other panels still fill."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic

from midipipe.core.errors import BadMidi
from midipipe.data.midi import count_bars, load_score
from midipipe.demo import DemoParams
from midipipe.emotion import predict_file
from midipipe.genre.predict import MODELS, Predictor, load_predictor

log = logging.getLogger(__name__)

GENRE_DIRS = {"phrase": "genre_phrase", "hier": "genre_hier"}
GENRE_STAGES = {"phrase": "train_genre", "hier": "train_genre_hier"}
# Russell's circumplex, as EMOPIA names its quadrants
QUADRANTS = {
    (True, True): "Q1 happy / excited (valence +, arousal +)",
    (False, True): "Q2 tense / angry (valence -, arousal +)",
    (False, False): "Q3 sad / depressed (valence -, arousal -)",
    (True, False): "Q4 calm / relaxed (valence +, arousal -)",
}


@dataclass
class Analysis:
    """One file's results; `error` set means the file itself was refused."""

    name: str
    error: str | None = None
    score: symusic.Score | None = None
    facts: dict = field(default_factory=dict)
    genre: dict[str, dict] = field(default_factory=dict)  # kind -> predict() output or {error}
    emotion: list[dict] = field(default_factory=list)  # predict_file rows
    emotion_error: str | None = None
    emotion_note: str | None = None  # why the rule estimate stands in for the learned model


def facts(score: symusic.Score) -> dict:
    """Bars, length, tempi, meters and tracks, as a reader wants them."""
    tempos = sorted({round(t.qpm, 1) for t in score.tempos}) or [120.0]
    meters = list(dict.fromkeys(f"{t.numerator}/{t.denominator}" for t in score.time_signatures))
    tracks = [
        f"{t.name or 'untitled'} ({'drums' if t.is_drum else f'program {t.program}'}, "
        f"{len(t.notes)} notes)"
        for t in score.tracks
        if len(t.notes)
    ]
    return {
        "bars": count_bars(score),
        "length": f"{score.to('second').end():.1f} s",
        "notes": int(score.note_num()),
        "tempo (bpm)": ", ".join(f"{t:g}" for t in tempos[:6])
        + (" ..." if len(tempos) > 6 else ""),
        "meters": ", ".join(meters) or "4/4 (none given)",
        "tracks": "; ".join(tracks),
    }


def quadrant(rows: list[dict]) -> tuple[str, dict[str, float]]:
    """The piece's quadrant (from its mean valence and arousal) and each quadrant's share of
    bars."""
    va = np.array([[r["valence"], r["arousal"]] for r in rows])
    mean = va.mean(0)
    shares = {name: 0.0 for name in QUADRANTS.values()}
    for v, a in va:
        shares[QUADRANTS[(bool(v >= 0), bool(a >= 0))]] += 1 / len(va)
    return QUADRANTS[(bool(mean[0] >= 0), bool(mean[1] >= 0))], shares


class Analyser:
    """The models of one `models/` folder, each loaded on first use and kept."""

    def __init__(self, models: str | Path, params: DemoParams) -> None:
        self.models = Path(models)
        self.params = params
        self._genre: dict[str, Predictor | str] = {}

    def genre_model(self, kind: str) -> Predictor | str:
        """The loaded predictor, or why there is none."""
        if kind not in self._genre:
            folder = self.models / GENRE_DIRS[kind]
            if not (folder / "config.json").exists():
                self._genre[kind] = (
                    f"no {kind} genre model in {folder} "
                    f"(train it: `dvc repro {GENRE_STAGES[kind]}`)"
                )
            else:
                try:
                    self._genre[kind] = load_predictor(kind, folder)
                except (OSError, ValueError, KeyError) as exc:
                    self._genre[kind] = f"the {kind} genre model in {folder} does not load: {exc}"
        return self._genre[kind]

    @property
    def emotion_dir(self) -> Path:
        return self.models / "emotion"

    def analyse(self, path: str | Path, top_k: int | None = None) -> Analysis:
        path = Path(path)
        out = Analysis(name=path.name)
        limit = self.params.max_upload_mb * 2**20
        try:
            size = path.stat().st_size
            if size > limit:
                raise BadMidi(
                    f"{size / 2**20:.1f} MB, above the {self.params.max_upload_mb:g} MB limit"
                )
            out.score = load_score(path, max_notes=self.params.max_notes)
        except (BadMidi, OSError) as exc:
            out.error = f"{path.name}: {exc}"
            return out
        out.facts = facts(out.score)
        for kind in MODELS:
            model = self.genre_model(kind)
            if isinstance(model, str):
                out.genre[kind] = {"error": model}
                continue
            out.genre[kind] = model.predict(path, top_k or self.params.top_k)
        try:
            out.emotion = predict_file(path, self.emotion_dir, self.models / "musetok")
        except (BadMidi, OSError, ValueError, KeyError) as exc:  # e.g. a meter MuseTok lacks
            out.emotion_note = f"the learned model cannot read this file ({exc})"
            out.emotion = predict_file(path, rules_only=True)
        if not out.emotion:
            out.emotion_error = "no bars to estimate"
        return out
