"""Stage 10's models and batched step: parsed songs (`song.Prepared`) -> per-bar valence and
arousal, with the estimator of every bar.

Estimators, as models/emotion/config.json names them: `rules` (hand-set, the workers compute it),
`mlp_cues` (an MLP on the rule cues; no encoder), `mlp_latents` / `mlp_latents+cues` (an MLP
reading MuseTok latents: this process encodes the bars of many songs per pass). A latent
estimator falls back to the cues model for a song MuseTok rejects (its meter or a pitch is
outside the vocabulary) and for a bar longer than the encoder window (its latent sees only the
start): the cues MLP stage 07 trains beside it in models/emotion/fallback/, or the rule estimate
when that folder is missing (older models), with a warning. Each bar row names its estimator.

See `local_engine` for the flow and `store` for the output folder and the resume protocol.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from midipipe.annotate.params import AnnotateParams
from midipipe.annotate.rows import Job
from midipipe.annotate.song import Prepared, SongPlan, prepare
from midipipe.core.code import code_version
from midipipe.data.pool import Failure

log = logging.getLogger(__name__)

RULES = "rules"  # models/emotion/config.json `estimator` of the hand-set estimate
FALLBACK = "fallback"  # models/emotion/<this>/: the cues model a latent estimator falls back to
CODE_ROOTS = ("midipipe.annotate.song", "midipipe.annotate.annotator")


class PhaseClock:
    """Seconds per phase, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def add(self, seconds: dict[str, float]) -> None:
        for phase, s in seconds.items():
            self.seconds[phase] += s


@dataclass
class SongResult:
    """One song's annotation (`reason` None) or failure."""

    key: str
    reason: str | None
    estimator: str = ""  # what produced the song's bars (its fallback's when MuseTok rejected it)
    va: np.ndarray | None = None  # [n_bars, 2]
    bounds: np.ndarray | None = None  # [n_bars + 1] ticks
    start_s: np.ndarray | None = None  # [n_bars]
    fallback: str | None = None  # why (some of) its bars are the fallback's
    fallback_bars: np.ndarray | None = None  # bar indices given to `fallback_estimator`
    fallback_estimator: str = ""
    n_truncated: int = 0
    meta: dict = field(default_factory=dict)

    def n_fallback_bars(self) -> int:
        if self.fallback_bars is not None:
            return len(self.fallback_bars)
        return len(self.va) if self.fallback else 0  # the whole song

    def bar_estimators(self) -> np.ndarray:
        out = np.full(len(self.va), self.estimator, dtype=object)
        if self.fallback_bars is not None and len(self.fallback_bars):
            out[self.fallback_bars] = self.fallback_estimator
        return out


def emotion_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if path.exists():
        return json.loads(path.read_text())
    from midipipe.emotion import rules_config
    from midipipe.emotion.rules import RuleParams

    log.warning("no %s: annotating with the rule-based estimate (hand-set, not learned)", path)
    return rules_config(RuleParams())


def _files_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.parent.name}/{path.name}".encode())  # not where the folder is
        if path.exists():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class Annotator:
    """The models (MuseTok encoder + emotion MLP + the fallback, or nothing for the rules) and
    the batched step from parsed songs to per-bar valence/arousal."""

    def __init__(self, p: AnnotateParams, load_models: bool = True, gpu: bool | None = None):
        from midipipe.emotion.regressor import latent_of
        from midipipe.emotion.rules import RuleParams
        from midipipe.musetok.encode import PadStats

        self.p = p
        self.config = emotion_config(p.emotion)
        self.estimator = self.config["estimator"]
        learned = self.estimator != RULES
        mlp_input = self.config["mlp"]["input"] if learned else None
        self.latent = None if mlp_input is None else latent_of(mlp_input)  # None: no encoder
        rules = self.config.get("rules") if not learned else None
        self.cue_window = rules["window"] if rules else self.config["cue_window"]
        self.fallback_dir = Path(p.emotion) / FALLBACK
        self.fallback_estimator = ""
        if self.latent is not None:
            if (self.fallback_dir / "config.json").exists():
                self.fallback_estimator = json.loads(
                    (self.fallback_dir / "config.json").read_text()
                )["estimator"]
            else:
                log.warning(
                    "no %s: songs and bars MuseTok cannot encode get the rule-based estimate "
                    "(retrain stage 07 for a learned cues fallback)",
                    self.fallback_dir,
                )
                self.fallback_estimator = RULES
                rules = asdict(RuleParams(window=self.cue_window))
        self.plan = SongPlan(p.max_notes, self.cue_window, self.latent is not None, rules)
        self.gpu = gpu
        self.pad_stats = PadStats()
        self.clock = PhaseClock()
        self.encoder = self.mlp = self.fallback_mlp = None
        if learned and load_models:
            self._load_models()

    def _load_models(self) -> None:
        import torch

        from midipipe.core.device import resolve_device
        from midipipe.emotion import regressor
        from midipipe.musetok import checkpoint

        if self.p.torch_threads:  # intra-op threads spin against the parse workers for a core
            torch.set_num_threads(self.p.torch_threads)
        device = resolve_device(self.p.device)
        self.mlp = regressor.load(self.p.emotion).to(device)
        if self.latent is not None:
            self.encoder = checkpoint.load(self.p.musetok, device=device)
            if self.fallback_estimator != RULES:
                self.fallback_mlp = regressor.load(self.fallback_dir).to(device)
        cfg = self.mlp.cfg
        musetok = None if self.encoder is None else self.encoder.config
        width = regressor.input_width(cfg.input, musetok)
        if width != cfg.width:
            raise ValueError(
                f"{self.p.musetok} gives {cfg.input} of width {width}, but the "
                f"emotion model in {self.p.emotion} was trained on width "
                f"{cfg.width}: use the MuseTok model it was trained with"
            )

    def work(self) -> partial:
        """The per-song function for workers (picklable)."""
        return partial(prepare, plan=self.plan)

    def fingerprint(self) -> dict:
        """What the annotations depend on besides the song bytes: the code of the annotation
        path, the params that change results, the models and the encoder's precision."""
        files = [Path(self.p.emotion) / n for n in ("config.json", "model.safetensors")]
        if self.latent is not None:
            files += [Path(self.p.musetok) / n for n in ("config.json", "model.safetensors")]
            files += [self.fallback_dir / n for n in ("config.json", "model.safetensors")]
        if self.gpu is None:
            from midipipe.core.device import resolve_device

            self.gpu = resolve_device(self.p.device).type == "cuda"
        return {
            "estimator": self.estimator,
            "fallback_estimator": self.fallback_estimator,
            "models_sha256": _files_sha256(files),
            "rules": self.plan.rules,
            "code_sha256": code_version(*CODE_ROOTS),
            "params": self.p.result_params(),
            "encoder_precision": "bf16" if self.gpu and self.latent else "fp32",
        }

    def finish(self, items: list[tuple[Job, Prepared | Failure]]) -> list[SongResult]:
        """Per-song results in input order; the MLPs run over all bars of `items` together."""
        results = []
        for job, out in items:
            if isinstance(out, Failure):
                results.append(SongResult(job.key, out.reason, self.estimator, meta=job.meta))
                continue
            self.clock.add(out.seconds)
            results.append(
                SongResult(
                    job.key,
                    None,
                    self.estimator,
                    out.va if self.estimator == RULES else None,
                    out.bounds,
                    out.start_s.astype(np.float32),
                    meta=job.meta,
                )
            )
        songs = [(r, out) for r, (_, out) in zip(results, items, strict=True) if r.reason is None]
        if self.estimator == RULES:
            return results
        if self.latent is None:  # the cues MLP
            self._predict(self.mlp, songs)
            return results
        encoded = [(r, out) for r, out in songs if out.ids is not None]
        rejected = [(r, out) for r, out in songs if out.ids is None]
        self._predict(self.mlp, encoded)
        for r, out in rejected:
            r.estimator, r.fallback = self.fallback_estimator, out.rejected
        truncated = []
        for r, out in encoded:
            lengths = np.diff(np.append(out.bar_starts, len(out.ids)))
            bars = np.flatnonzero(lengths > self.encoder.config.enc_seqlen)
            if len(bars):
                r.fallback = f"{len(bars)} bars longer than the encoder window"
                r.fallback_bars, r.fallback_estimator = bars, self.fallback_estimator
                truncated.append((r, out))
        if self.fallback_mlp is None:  # the rule estimate, from the workers
            for r, out in rejected:
                r.va = out.va
            for r, out in truncated:
                r.va[r.fallback_bars] = out.va[r.fallback_bars]
            return results
        self._predict(self.fallback_mlp, rejected)
        if truncated:
            va = self._values(self.fallback_mlp, truncated)
            for (r, _), v in zip(truncated, va, strict=True):
                r.va[r.fallback_bars] = v[r.fallback_bars]
        return results

    def _predict(self, mlp, songs: list[tuple[SongResult, Prepared]]) -> None:
        for (r, _), va in zip(songs, self._values(mlp, songs), strict=True):
            r.va = va

    def _values(self, mlp, songs: list[tuple[SongResult, Prepared]]) -> list[np.ndarray]:
        """Per-song [n_bars, 2] of `mlp` (encoding the bars when it reads latents)."""
        from midipipe.emotion import regressor
        from midipipe.musetok.encode import encode_pieces

        if not songs:
            return []
        name = mlp.cfg.input
        latents: dict[str, np.ndarray] = {}
        latent = regressor.latent_of(name)
        if latent is not None:
            with self.clock("encoder"):
                pieces = ((out.ids, out.bar_starts) for _, out in songs)
                encoded = list(
                    encode_pieces(self.encoder, pieces, self.p.batch_size, stats=self.pad_stats)
                )
                latents[latent] = np.concatenate([regressor.inputs_of(e)[latent] for e in encoded])
            for (r, _), enc in zip(songs, encoded, strict=True):
                r.n_truncated = enc.n_truncated
        cues = None
        if regressor.reads_cues(name):
            cues = np.concatenate([out.cues for _, out in songs])
        x = regressor.assemble(name, latents, cues)
        offsets = np.concatenate([[0], np.cumsum([out.n_bars for _, out in songs])])
        with self.clock("regressor"):
            va = regressor.predict(mlp, x, offsets).astype(np.float32, copy=False)
        return [va[lo:hi] for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)]
