"""`midipipe genre FILE.mid`: genre probabilities of one MIDI file from a trained model folder.

A model folder is self-contained: weights, `config.json` (classes or tags, phrase or chunk
shape, the vocabulary fingerprint, for the hierarchical model the threshold tuned on valid
and the LM it was trained on) and the `tokenizer.json` its ids mean. A file the models cannot
read (empty, unparsable, drums only, shorter than one phrase) gets a dict with an `error`
reason instead of a prediction; a checkpoint trained on another vocabulary, or whose LM has
changed since, raises ValueError. When stage 05 found the hand-crafted model better on valid,
the folder also holds it (`handcrafted.*`) and it gives the probabilities (`served`).

Prediction runs with the torch thread count `prediction_threads` picks for the model's size:
one thread for the CPU-sized models, whose forward passes are chains of small matmuls where
OpenMP's syncing costs more than a second core gives back, and where on a busy machine the
second thread waits for a core (cpu_default phrase model on a 3-minute song, 2-core machine
at load 6: 0.28 s with one thread, 0.80 s with two; at load 11: 0.91 s and 14.9 s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import symusic
import torch

from midipipe.core.device import inference_mode, resolve_device, torch_threads
from midipipe.core.errors import BadMidi
from midipipe.data.midi import load_score
from midipipe.evaluation.features import LinearModel, piece_features
from midipipe.genre import remiz
from midipipe.genre.encoder import Encoder, load_encoder
from midipipe.genre.hier_model import FrozenLM, HierClassifier, load_hier, weights_sha256
from midipipe.genre.hier_train import hier_probs
from midipipe.genre.phrase_train import phrase_probs
from midipipe.genre.phrases import TOKENIZER_FILE, Vocab, check_vocab, chunks, phrases
from midipipe.tokens import remi

log = logging.getLogger(__name__)

MODELS = ("phrase", "hier")
MODEL_DIRS = {"phrase": "models/genre_phrase", "hier": "models/genre_hier"}
SMALL_MODEL_PARAMS = 5_000_000  # below this, one thread predicts fastest


def prediction_threads(n_params: int) -> int:
    """Torch threads for one prediction with a model of `n_params` (LM included): one for a
    small model, torch's own count for a large one (see module doc)."""
    return 1 if n_params < SMALL_MODEL_PARAMS else torch.get_num_threads()


@dataclass
class Predictor:
    """A loaded model folder; `predict` classifies one file."""

    kind: str
    folder: Path
    tokenizer: Any
    vocab: Vocab
    meta: dict
    model: Encoder | HierClassifier
    lm: FrozenLM | None = None
    threads: int = 1  # torch threads while predicting: `prediction_threads`
    device: torch.device = torch.device("cpu")
    served: LinearModel | None = None  # stage 05 serves the hand-crafted model (it won on valid)

    def names(self) -> list[str]:
        return self.meta["classes"] if self.kind == "phrase" else self.meta["tags"]

    def read(self, path: str | Path) -> symusic.Score:
        """The file's score, or BadMidi with the reason the file cannot be classified."""
        path = Path(path)
        if not path.is_file():
            raise BadMidi(f"no such file: {path}")
        score = load_score(path)
        if all(t.is_drum for t in score.tracks if len(t.notes)):
            raise BadMidi("drum tracks only: the genre models read pitched notes")
        return score

    def predict(
        self, path: str | Path, top_k: int = 3, threshold: float | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"file": str(path), "model": self.kind}
        try:
            score = self.read(path)
        except BadMidi as exc:
            return {**out, "error": str(exc)}
        probs, extra = self.score_probs(score)
        if probs is None:
            return {**out, **extra}
        if threshold is None:
            threshold = float(self.meta.get("threshold", 0.5))
        names = self.names()
        order = np.argsort(-probs, kind="stable")
        return {
            **out,
            **extra,
            "label": self.meta.get("label", "tags"),
            "prediction": names[order[0]],
            "top_k": [
                {"genre": names[i], "probability": round(float(probs[i]), 4)}
                for i in order[: max(1, top_k)]
            ],
            "genres": [names[i] for i in order if probs[i] >= threshold],
            "threshold": threshold,
            "probabilities": {n: round(float(p), 4) for n, p in zip(names, probs, strict=True)},
        }

    def score_probs(self, score: symusic.Score) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Class probabilities of one score as the folder serves them (None with an `error`
        when it is too short), and what the model saw; also the composer judge's entry."""
        ids, bars = remi.encode(self.tokenizer, score)
        with torch_threads(self.threads), inference_mode(self.device):
            if self.kind == "phrase":
                probs, extra = self._phrase(ids, bars)
            else:
                probs, extra = self._hier(ids, bars, score)
        if self.served is not None and probs is not None:
            probs = self.served.predict_proba(piece_features(score)[None])[0]
            extra = {**extra, "served": "handcrafted"}
        return probs, extra

    def _phrase(self, ids: np.ndarray, bars: np.ndarray) -> tuple[np.ndarray | None, dict]:
        need, max_len = self.meta["bars_per_phrase"], self.meta["max_len"]
        cut = phrases(ids, bars, self.vocab, need, max_len)
        if cut.n_bars < need:
            bars = f"{cut.n_bars} bar{'' if cut.n_bars == 1 else 's'}"
            return None, {"error": f"too short to classify: {bars}, {need} needed"}
        if not cut.seqs:
            return None, {"error": f"no {need}-bar phrase with notes in {cut.n_bars} bars"}
        probs = phrase_probs(self.model, cut.seqs, batch_size=16).mean(0)  # little padding
        return probs, {
            "n_bars": cut.n_bars,
            "n_phrases": len(cut.seqs),
            "truncated_phrases": cut.truncated,
        }

    def _hier(
        self, ids: np.ndarray, bars: np.ndarray, score: symusic.Score
    ) -> tuple[np.ndarray | None, dict]:
        shape = (self.meta["bars_per_chunk"], self.meta["max_tokens"], self.meta["max_chunks"])
        if self.lm.remiz is None:
            cut = chunks(ids, bars, self.vocab, *shape)
        else:  # the LM reads REMI-z, from the MIDI
            try:
                cut = remiz.chunks(self.lm.remiz, score.dumps_midi(), *shape)
            except BadMidi as exc:
                return None, {"error": str(exc)}
        if not cut.seqs:
            return None, {"error": "too short to classify: 0 bars with notes, 1 needed"}
        x = self.lm.embed(
            cut.seqs, batch_size=1
        )  # one song: padding costs more than batching saves
        probs = hier_probs(self.model, [x])[0]
        return probs, {
            "n_bars": cut.n_bars,
            "n_chunks": len(cut.seqs),
            "truncated_chunks": cut.truncated,
        }


def load_predictor(
    model: str = "phrase", model_dir: str | Path | None = None, device: str = "cpu"
) -> Predictor:
    """Load and check a model folder (default: models/genre_phrase or models/genre_hier) onto
    `device` (auto | cpu | cuda)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    device = resolve_device(device)
    folder = Path(model_dir or MODEL_DIRS[model])
    if model == "phrase":
        net, meta = load_encoder(folder, device)
    else:
        net, meta = load_hier(folder)
        net = net.to(device)
    if meta.get("kind") != model:
        raise ValueError(f"{folder} holds a {meta.get('kind')!r} genre model, not {model!r}")
    tok_path = folder / TOKENIZER_FILE
    if not tok_path.exists():
        raise FileNotFoundError(f"{tok_path} missing: the model folder is incomplete")
    tokenizer = remi.load_tokenizer(tok_path)
    vocab = Vocab.of(tokenizer)
    check_vocab(meta["vocab_sha"], meta["vocab_size"], vocab, f"the {model} model in {folder}")
    lm = None
    if model == "hier":
        lm_dir = Path(meta["lm"]["path"])
        if not lm_dir.is_dir():
            raise FileNotFoundError(f"the LM this model was trained on is gone: {lm_dir}")
        if weights_sha256(lm_dir) != meta["lm"]["sha256"]:
            raise ValueError(
                f"the LM in {lm_dir} changed since the hierarchical genre model "
                "was trained on it: retrain stage 06 (train_genre_hier)"
            )
        lm = FrozenLM(lm_dir, tokenizer, device)
        if lm.tokenizer_sha != meta["lm"].get("tokenizer_sha"):
            raise ValueError(
                f"the LM in {lm_dir} has another tokenizer than when the hierarchical genre "
                "model was trained on it: retrain stage 06 (train_genre_hier)"
            )
    n_params = sum(p.numel() for p in net.parameters())
    if lm is not None:
        n_params += sum(p.numel() for p in lm.model.parameters())
    threads = prediction_threads(n_params)
    log.debug("%s genre model: %d parameters, %d torch threads", model, n_params, threads)
    served = LinearModel.load(folder) if (folder / "handcrafted.json").exists() else None
    return Predictor(model, folder, tokenizer, vocab, meta, net, lm, threads, device, served)


_LOADED: dict[tuple[str, str, str], Predictor] = {}


def predict(
    path: str | Path,
    model: str = "phrase",
    top_k: int = 3,
    threshold: float | None = None,
    model_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict:
    """Genre probabilities of one MIDI file (JSON-able). `threshold` None: the one tuned on
    valid (hierarchical model), 0.5 (phrase model). Loaded folders are kept for later calls."""
    key = (model, str(Path(model_dir or MODEL_DIRS.get(model, "")).resolve()), device)
    if key not in _LOADED:
        _LOADED[key] = load_predictor(model, model_dir, device)
    return _LOADED[key].predict(path, top_k, threshold)
