"""Stage 10's per-song work, run in isolated worker processes: parse, bar grid, rule cues, and
MuseTok events when the estimator reads latents.

Bars: a song MuseTok encodes gets MuseTok's bars (its first time signature throughout), so cues
and latents describe the same bars. Every other song (rule and cue estimators, and the songs
MuseTok rejects: a meter or pitch outside its vocabulary) gets the bars of its own time
signatures (`rules.meter_grid`). Either way each bar carries its start and end tick and its
start in seconds.

Test hook: `data.midi.FAULT_ENV`, keyed by the row's md5 (or its key when the row has no
bytes), so tests can check that both engines isolate real crashes and hangs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from midipipe.annotate.rows import Job
from midipipe.data.midi import inject_test_fault, load_score


class RowError(ValueError):
    """A row without usable MIDI bytes."""


@dataclass(frozen=True)
class SongPlan:
    """What the workers compute per song (picklable)."""

    max_notes: int
    cue_window: int
    latents: bool  # try MuseTok events (the estimator reads latents)
    rules: dict | None = None  # combine the cues with these hand-set weights (rule estimate)


@dataclass
class Prepared:
    """A parsed song: its bars, cues, and MuseTok ids (when encoded) or rule estimate."""

    bounds: np.ndarray  # [n_bars + 1] ticks: bar starts, then the last bar's end
    start_s: np.ndarray  # [n_bars] seconds
    cues: np.ndarray  # [n_bars, len(rules.CUE_COLUMNS)]: `rules.bar_cues`
    ids: np.ndarray | None = None  # MuseTok tokens (None: not encoded)
    bar_starts: np.ndarray | None = None
    va: np.ndarray | None = None  # [n_bars, 2] rule estimate (plan.rules)
    rejected: str | None = None  # why MuseTok could not encode the song
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_bars(self) -> int:
        return len(self.bounds) - 1


def warm_up() -> None:
    """Pool initializer: import what `prepare` needs before the first song's timeout runs
    (a spawned worker on a busy machine can take seconds to import torch)."""
    import midipipe.emotion.rules  # noqa: F401
    import midipipe.musetok.events  # noqa: F401


def prepare(job: Job, plan: SongPlan) -> Prepared:
    """Parse and measure one song; raises with a readable reason (BadMidi, RowError) for a song
    that cannot be annotated. MuseTok rejecting it is not an error: `rejected` says why."""
    from midipipe.core.params import build
    from midipipe.emotion.rules import (
        RuleParams,
        bar_cues,
        bar_grid,
        combine,
        meter_grid,
        seconds_at,
    )

    if job.missing:
        raise RowError(job.missing)
    inject_test_fault(job.key)
    t0 = time.perf_counter()
    score = load_score(job.music, max_notes=plan.max_notes)
    seconds = {"parse": time.perf_counter() - t0}
    ids = bar_starts = rejected = None
    if plan.latents:
        from midipipe.musetok.events import encode_score

        t0 = time.perf_counter()
        try:
            tokens, starts = encode_score(score, job.music)
            ids, bar_starts = np.asarray(tokens, np.int32), np.asarray(starts, np.int32)
        except Exception as exc:  # outside MuseTok's vocabulary: the song takes the cues model
            rejected = f"{type(exc).__name__}: {exc}"
        seconds["events"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = meter_grid(score) if ids is None else bar_grid(score, len(bar_starts))
    bounds = grid.bounds()
    cues = bar_cues(score, grid, plan.cue_window).astype(np.float32)
    va = None
    if plan.rules is not None:
        va = combine(cues, build(RuleParams, plan.rules, "rules")).astype(np.float32)
    seconds["cues"] = time.perf_counter() - t0
    start_s = seconds_at(score, bounds[:-1])
    return Prepared(bounds, start_s, cues, ids, bar_starts, va, rejected, seconds)
