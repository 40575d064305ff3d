"""One stage-10 run's facts and its metrics/annotate.json."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any

from midipipe.annotate.annotator import RULES

PHASES = ("read", "parse", "events", "cues", "encoder", "regressor", "write")


@dataclass
class Report:
    """One run's facts; `metrics()` is metrics/annotate.json."""

    engine: str
    estimator: str = ""
    workers: int = 0
    rows_read: int = 0
    skipped_done: int = 0
    songs_new: int = 0
    bars_new: int = 0
    retried: int = 0  # transient failures of an earlier run tried again
    restarted: list[str] = field(default_factory=list)  # what changed since the last run
    stream_error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    padded_share: float = 0.0  # encoder positions that were padding
    encoder_bars: int = 0  # bars through the encoder (not those of songs it cannot encode)
    wall_s: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    projection_songs: int = 0

    def metrics(self) -> dict[str, Any]:
        bars_per_s = self.bars_new / self.wall_s if self.wall_s else 0.0
        mean_bars = self.totals.get("bars", 0) / max(1, self.totals.get("songs_ok", 0))
        hours = self.projection_songs * mean_bars / bars_per_s / 3600 if bars_per_s else None
        out: dict[str, Any] = {
            "engine": self.engine,
            "estimator": self.estimator,
            "estimator_learned": self.estimator != RULES,
            "workers": self.workers,
            **self.totals,
            "rows_read": self.rows_read,
            "skipped_done": self.skipped_done,
            "retried_transient": self.retried,
            "started_afresh_because": ", ".join(self.restarted),
            "songs_this_run": self.songs_new,
            "bars_this_run": self.bars_new,
            "wall_s": self.wall_s,
            "bars_per_s": bars_per_s,
            "songs_per_s": self.songs_new / self.wall_s if self.wall_s else 0.0,
            "mean_bars_per_song": mean_bars,
            "encoder_bars": self.encoder_bars,
            "encoder_bars_per_s": self.encoder_bars / self.seconds["encoder"]
            if self.seconds.get("encoder")
            else 0.0,
            "encoder_padded_share": self.padded_share,
            "projection_songs": self.projection_songs,
            "projected_hours_gigamidi_v2": hours,
            "stream_error": self.stream_error or "",
        }
        out["peak_rss_main_mb"], out["peak_rss_worker_mb"] = peak_rss_mb()
        for phase in PHASES:
            out[f"seconds_{phase}"] = self.seconds.get(phase, 0.0)
        return out


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process, and of the largest finished child (a worker)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(child, 1)
