"""A transparent, hand-weighted valence/arousal estimate per bar, read from the MIDI itself.

Nothing here is learned: five musical cues are measured per bar, scaled to about [-1, 1] with
fixed reference points, and combined with the weights in `RuleParams` (params.yaml
`emotion.rules`), then squashed with tanh. The cue directions follow the music-psychology
literature (Gabrielsson & Lindström 2010, "The role of structure in the musical expression of
emotions", Handbook of Music and Emotion; Juslin & Laukka 2004): major mode, high register and
fast tempo read as positive; fast tempo, dense and loud playing read as aroused. The default
magnitudes are our choice, not fitted to any data.

Cues (columns of `bar_features`):
- mode: best major minus best minor Krumhansl-Kessler (1982) key-profile correlation of the
  duration-weighted pitch-class histogram over the bar and `window` bars either side, / 0.25;
- tempo: (quarter notes per minute at the bar start - 100) / 50;
- density: log2(note onsets per second / 4) / 2 (1 note/s -> -1, 16 notes/s -> +1);
- register: (mean MIDI pitch of the bar's onsets, drums excluded - 64) / 12;
- velocity: (mean onset velocity - 80) / 30.
Each cue is clipped to [-1, 1]; a bar without notes has density -1 and neutral (0) pitch cues.

Two bar grids, both in the score's own ticks and starting at the bar of the first note:
`meter_grid` follows every time signature of the score (any meter, read by symusic), the grid
of the rule and cue estimators; `bar_grid` is MuseTok's (the first time signature's bar length
throughout), so cues line up with per-bar latents where an estimator reads both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import symusic

from midipipe.evaluation.music_metrics import key_correlations

FEATURES = ("mode", "tempo", "density", "register", "velocity")

MODE_SCALE = 0.25
MUSETOK_TPQ = 480  # MuseTok rescales ticks to this before it finds the first bar


@dataclass
class RuleParams:
    """Hand-set cue weights (not learned): estimate = tanh(sum of weight * cue)."""

    window: int = 2  # bars either side that the key-profile histogram also counts
    valence: dict[str, float] = field(
        default_factory=lambda: {"mode": 0.8, "tempo": 0.2, "register": 0.2}
    )
    arousal: dict[str, float] = field(
        default_factory=lambda: {"tempo": 0.5, "density": 0.5, "velocity": 0.4, "register": 0.1}
    )

    def __post_init__(self) -> None:
        for axis in ("valence", "arousal"):
            unknown = sorted(set(getattr(self, axis)) - set(FEATURES))
            if unknown:
                raise ValueError(
                    f"emotion.rules.{axis}: unknown cue(s) {unknown} (known: {', '.join(FEATURES)})"
                )


@dataclass(frozen=True)
class BarGrid:
    """MuseTok's bars of one score, in the score's own ticks."""

    tpq: int
    bar_ticks: float  # the first time signature's bar, used throughout (as MuseTok does)
    first_bar: int  # bars before the first note's bar are dropped
    n_bars: int

    @property
    def bar_quarters(self) -> float:
        return self.bar_ticks / self.tpq

    def bounds(self) -> np.ndarray:
        """[n_bars + 1] ticks: each bar's start, then the last bar's end."""
        return (self.first_bar + np.arange(self.n_bars + 1)) * self.bar_ticks

    def starts(self) -> np.ndarray:
        """Tick of each bar's start."""
        return self.bounds()[:-1]


MAX_BARS = 100_000  # a meter grid longer than this is a broken file (ticks far apart), not music


@dataclass(frozen=True)
class MeterGrid:
    """Bars that follow every time signature: a new signature starts a new bar."""

    tpq: int
    edges: np.ndarray  # [n_bars + 1] ticks (float: a bar may be a fractional tick count)

    @property
    def n_bars(self) -> int:
        return len(self.edges) - 1

    def bounds(self) -> np.ndarray:
        return self.edges

    def starts(self) -> np.ndarray:
        return self.edges[:-1]


def meter_grid(score: symusic.Score) -> MeterGrid:
    """The score's bars from its time signatures (4/4 before the first; invalid ones, with a
    zero numerator or denominator, ignored), from the bar of the first onset to the bar of the
    last note end. Raises ValueError without notes or beyond `MAX_BARS` bars."""
    tpq = score.ticks_per_quarter
    notes = _notes(score)
    if len(notes) == 0:
        raise ValueError("no notes")
    first = float(notes[:, 0].min())
    end = max(float((notes[:, 0] + notes[:, 1]).max()), first + 1)
    lengths: dict[float, float] = {0.0: 4.0 * tpq}  # tick -> bar length from there on
    for ts in sorted(score.time_signatures, key=lambda ts: ts.time):
        if ts.numerator > 0 and ts.denominator > 0:
            lengths[float(ts.time)] = max(1.0, 4.0 * tpq * ts.numerator / ts.denominator)
    times = sorted(lengths)
    segments = []  # (start, bar length, first bar, bars, next signature) covering [first, end)
    for k, t in enumerate(times):
        cut = times[k + 1] if k + 1 < len(times) else math.inf
        stop = min(cut, end)
        if stop <= first or t >= stop:
            continue
        length = lengths[t]
        lo = max(0, math.floor((first - t) / length))
        segments.append((t, length, lo, math.ceil((stop - t) / length) - lo, cut))
    n_bars = sum(seg[3] for seg in segments)
    if n_bars > MAX_BARS:
        raise ValueError(f"{n_bars} bars, more than {MAX_BARS}")
    starts = np.concatenate(
        [t + length * np.arange(lo, lo + n) for t, length, lo, n, _ in segments]
    )
    t, length, lo, n, cut = segments[-1]
    return MeterGrid(tpq, np.append(starts, min(t + length * (lo + n), cut)))


def _notes(score: symusic.Score, drums: bool = True) -> np.ndarray:
    arrays = [t.notes.numpy() for t in score.tracks if drums or not t.is_drum]
    keys = ("time", "duration", "pitch", "velocity")
    if not arrays:
        return np.zeros((0, 4), np.int64)
    return np.stack([np.concatenate([a[k] for a in arrays]).astype(np.int64) for k in keys], 1)


def bar_grid(score: symusic.Score, n_bars: int | None = None) -> BarGrid:
    """The grid of `score`; `n_bars` (MuseTok's count, when known) overrides the estimate
    from the last note's end."""
    tpq = score.ticks_per_quarter
    sig = score.time_signatures[0] if len(score.time_signatures) else None
    quarters = 4 * sig.numerator / sig.denominator if sig else 4.0
    notes = _notes(score)
    if len(notes) == 0:
        raise ValueError("no notes")
    bar480 = int(MUSETOK_TPQ * quarters)
    first = int(int(notes[:, 0].min() / tpq * MUSETOK_TPQ) // bar480)
    bar_ticks = tpq * quarters
    if n_bars is None:
        n_bars = max(1, math.ceil(int((notes[:, 0] + notes[:, 1]).max()) / bar_ticks) - first)
    return BarGrid(tpq, bar_ticks, first, n_bars)


def tempo_at(score: symusic.Score, ticks: np.ndarray) -> np.ndarray:
    """Quarter notes per minute in force at each tick (120 before the first tempo event)."""
    tempos = sorted(score.tempos, key=lambda t: t.time)
    if not tempos:
        return np.full(len(ticks), 120.0)
    times = np.array([t.time for t in tempos])
    qpm = np.array([120.0] + [t.qpm for t in tempos])
    return qpm[np.searchsorted(times, ticks, side="right")]


def seconds_at(score: symusic.Score, ticks: np.ndarray) -> np.ndarray:
    """Wall-clock seconds of each tick, following every tempo change."""
    tempos = sorted(score.tempos, key=lambda t: t.time)
    times = np.array([0] + [t.time for t in tempos], dtype=np.float64)
    qpm = tempo_at(score, times)  # tempo of each segment starting at `times`
    sec_per_tick = 60.0 / (qpm * score.ticks_per_quarter)
    elapsed = np.concatenate([[0.0], np.cumsum(np.diff(times) * sec_per_tick[:-1])])
    seg = np.searchsorted(times, ticks, side="right") - 1
    return elapsed[seg] + (np.asarray(ticks, np.float64) - times[seg]) * sec_per_tick[seg]


def _mode(histograms: np.ndarray) -> np.ndarray:
    """Best major minus best minor key-profile correlation per pitch-class histogram row."""
    corr = key_correlations(histograms)
    return corr[:, :12].max(1) - corr[:, 12:].max(1)


def _bar_of(ticks: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Bar index of each tick (-1 before the grid, n_bars after it)."""
    return np.searchsorted(bounds, ticks, side="right") - 1


def bar_features(score: symusic.Score, grid: BarGrid | MeterGrid, window: int = 2) -> np.ndarray:
    """[n_bars, len(FEATURES)] cues, each scaled to [-1, 1] as the module docstring says."""
    n = grid.n_bars
    bounds = grid.bounds()
    starts = bounds[:-1]
    qpm = tempo_at(score, starts)
    out = np.zeros((n, len(FEATURES)))
    out[:, FEATURES.index("tempo")] = (qpm - 100.0) / 50.0

    notes = _notes(score)
    bar = _bar_of(notes[:, 0], bounds)
    keep = (bar >= 0) & (bar < n)
    notes, bar = notes[keep], bar[keep]
    onsets = np.bincount(bar, minlength=n)
    per_second = onsets / (np.diff(bounds) / grid.tpq) * qpm / 60.0
    density = np.log2(np.maximum(per_second, 1e-3) / 4.0) / 2.0
    out[:, FEATURES.index("density")] = np.where(onsets > 0, density, -1.0)
    velocity = np.bincount(bar, weights=notes[:, 3], minlength=n)
    mean_velocity = np.divide(velocity, onsets, out=np.full(n, 80.0), where=onsets > 0)
    out[:, FEATURES.index("velocity")] = (mean_velocity - 80.0) / 30.0

    pitched = _notes(score, drums=False)
    pbar = _bar_of(pitched[:, 0], bounds)
    keep = (pbar >= 0) & (pbar < n)
    pitched, pbar = pitched[keep], pbar[keep]
    count = np.bincount(pbar, minlength=n)
    pitch_sum = np.bincount(pbar, weights=pitched[:, 2], minlength=n)
    mean_pitch = np.divide(pitch_sum, count, out=np.full(n, 64.0), where=count > 0)
    out[:, FEATURES.index("register")] = (mean_pitch - 64.0) / 12.0

    hist = np.zeros((n, 12))
    np.add.at(hist, (pbar, pitched[:, 2] % 12), pitched[:, 1].astype(np.float64))
    cumulative = np.concatenate([np.zeros((1, 12)), np.cumsum(hist, 0)])
    lo = np.clip(np.arange(n) - window, 0, n)
    hi = np.clip(np.arange(n) + window + 1, 0, n)
    out[:, FEATURES.index("mode")] = _mode(cumulative[hi] - cumulative[lo]) / MODE_SCALE
    return np.clip(out, -1.0, 1.0)


def weight_matrix(p: RuleParams) -> np.ndarray:
    """[len(FEATURES), 2]: the valence and arousal weight of every cue (0 when not given)."""
    return np.array([[p.valence.get(f, 0.0), p.arousal.get(f, 0.0)] for f in FEATURES])


def combine(cues: np.ndarray, p: RuleParams) -> np.ndarray:
    """[n_bars, 2] valence, arousal in (-1, 1) from `bar_features` and the hand-set weights."""
    return np.tanh(cues @ weight_matrix(p))


def estimate(score: symusic.Score, grid: BarGrid | MeterGrid, p: RuleParams) -> np.ndarray:
    return combine(bar_features(score, grid, p.window), p)
