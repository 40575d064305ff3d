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

The learned estimators read more (`bar_cues`): these five cues and twelve further statistics of
each bar (`BAR_STATS`: onset rate, velocity peak and spread, polyphony, lowest and highest pitch,
note length, key strength, pitch classes, off-beat onsets, drums, empty bars), their mean over
`CONTEXT_BARS` bars either side, and their mean and std over the whole piece. On VGMIDI most of
the variance of listeners' bar ratings lies between pieces (about 90%), so the piece's own
statistics matter.

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
    notes = note_array(score)
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


def note_array(score: symusic.Score, drums: bool = True) -> np.ndarray:
    """[notes, 4] int64 columns time, duration, pitch, velocity of every track (in ticks)."""
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
    notes = note_array(score)
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


def _bar_of(ticks: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Bar index of each tick (-1 before the grid, n_bars after it)."""
    return np.searchsorted(bounds, ticks, side="right") - 1


@dataclass
class _Placed:
    """A score's notes placed on a grid, once for the five cues and the further statistics."""

    bounds: np.ndarray  # [n_bars + 1] ticks
    tpq: int
    qpm: np.ndarray  # [n_bars] tempo at each bar start
    notes: np.ndarray  # every note inside the grid (`note_array` columns) ...
    bar: np.ndarray  # ... and its bar
    pitched_all: np.ndarray  # every pitched note (drums excluded), inside the grid or not
    pitched: np.ndarray  # pitched notes inside the grid ...
    pbar: np.ndarray  # ... and their bars
    hist: np.ndarray  # [n_bars, 12] duration-weighted pitch-class histogram
    key_corr: np.ndarray  # [n_bars, 24] key profiles against the histogram over +-window bars

    @property
    def n(self) -> int:
        return len(self.bounds) - 1


def _inside(notes: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bar = _bar_of(notes[:, 0], bounds)
    keep = (bar >= 0) & (bar < len(bounds) - 1)
    return notes[keep], bar[keep]


def _place(score: symusic.Score, grid: BarGrid | MeterGrid, window: int) -> _Placed:
    bounds = grid.bounds()
    n = len(bounds) - 1
    notes, bar = _inside(note_array(score), bounds)
    pitched_all = note_array(score, drums=False)
    pitched, pbar = _inside(pitched_all, bounds)
    hist = np.zeros((n, 12))
    np.add.at(hist, (pbar, pitched[:, 2] % 12), pitched[:, 1].astype(np.float64))
    cumulative = np.concatenate([np.zeros((1, 12)), np.cumsum(hist, 0)])
    lo = np.clip(np.arange(n) - window, 0, n)
    hi = np.clip(np.arange(n) + window + 1, 0, n)
    key_corr = key_correlations(cumulative[hi] - cumulative[lo])
    qpm = tempo_at(score, bounds[:-1])
    return _Placed(bounds, grid.tpq, qpm, notes, bar, pitched_all, pitched, pbar, hist, key_corr)


def _features(b: _Placed) -> np.ndarray:
    """The five cues of `bar_features` from placed notes."""
    n = b.n
    out = np.zeros((n, len(FEATURES)))
    out[:, FEATURES.index("tempo")] = (b.qpm - 100.0) / 50.0
    onsets = np.bincount(b.bar, minlength=n)
    per_second = onsets / (np.diff(b.bounds) / b.tpq) * b.qpm / 60.0
    density = np.log2(np.maximum(per_second, 1e-3) / 4.0) / 2.0
    out[:, FEATURES.index("density")] = np.where(onsets > 0, density, -1.0)
    velocity = np.bincount(b.bar, weights=b.notes[:, 3], minlength=n)
    mean_velocity = np.divide(velocity, onsets, out=np.full(n, 80.0), where=onsets > 0)
    out[:, FEATURES.index("velocity")] = (mean_velocity - 80.0) / 30.0
    count = np.bincount(b.pbar, minlength=n)
    pitch_sum = np.bincount(b.pbar, weights=b.pitched[:, 2], minlength=n)
    mean_pitch = np.divide(pitch_sum, count, out=np.full(n, 64.0), where=count > 0)
    out[:, FEATURES.index("register")] = (mean_pitch - 64.0) / 12.0
    mode = b.key_corr[:, :12].max(1) - b.key_corr[:, 12:].max(1)  # best major - best minor
    out[:, FEATURES.index("mode")] = mode / MODE_SCALE
    return np.clip(out, -1.0, 1.0)


def bar_features(score: symusic.Score, grid: BarGrid | MeterGrid, window: int = 2) -> np.ndarray:
    """[n_bars, len(FEATURES)] cues, each scaled to [-1, 1] as the module docstring says."""
    return _features(_place(score, grid, window))


def weight_matrix(p: RuleParams) -> np.ndarray:
    """[len(FEATURES), 2]: the valence and arousal weight of every cue (0 when not given)."""
    return np.array([[p.valence.get(f, 0.0), p.arousal.get(f, 0.0)] for f in FEATURES])


def combine(cues: np.ndarray, p: RuleParams) -> np.ndarray:
    """[n_bars, 2] valence, arousal in (-1, 1) from `bar_features` (or `bar_cues`, whose first
    columns they are) and the hand-set weights."""
    return np.tanh(cues[:, : len(FEATURES)] @ weight_matrix(p))


def estimate(score: symusic.Score, grid: BarGrid | MeterGrid, p: RuleParams) -> np.ndarray:
    return combine(bar_features(score, grid, p.window), p)


# -- the learned estimators' inputs: more per-bar statistics, in context -------------------------

BAR_STATS = (
    *FEATURES,
    "onset_rate",  # log2 distinct onset times per second at the bar's tempo
    "velocity_max",
    "velocity_std",
    "polyphony",  # log2(1 + sounding pitched notes on average over the bar)
    "pitch_low",
    "pitch_high",
    "note_length",  # mean log2 pitched note duration, quarter notes
    "key_strength",  # best key-profile correlation over the bar and `window` bars either side
    "pitch_classes",  # distinct pitch classes in the bar / 12
    "offbeat",  # share of onsets off the quarter-note grid
    "drums",  # share of the bar's notes on drum tracks
    "empty",
)
CONTEXT_BARS = 4  # `bar_cues`' local means span this many bars either side
CUE_COLUMNS = (
    *BAR_STATS,
    *(f"{s}_context" for s in BAR_STATS),
    *(f"{s}_piece_mean" for s in BAR_STATS),
    *(f"{s}_piece_std" for s in BAR_STATS),
)


def bar_stats(score: symusic.Score, grid: BarGrid | MeterGrid, window: int = 2) -> np.ndarray:
    """[n_bars, len(BAR_STATS)]: the rule cues, then further statistics of each bar, roughly
    centred and scaled (the learned estimators standardise them anyway)."""
    b = _place(score, grid, window)
    n, bounds, notes, bar = b.n, b.bounds, b.notes, b.bar
    out = np.zeros((n, len(BAR_STATS)))
    out[:, : len(FEATURES)] = _features(b)
    col = {name: i for i, name in enumerate(BAR_STATS)}
    seconds = np.diff(bounds) / grid.tpq * 60.0 / b.qpm

    count = np.bincount(bar, minlength=n)
    has = count > 0
    order = np.lexsort((notes[:, 0], bar))
    first = np.r_[True, np.diff(bar[order]) != 0] | np.r_[True, np.diff(notes[order, 0]) != 0]
    onsets = np.bincount(bar[order][first], minlength=n)
    rate = np.log2(np.maximum(onsets / np.maximum(seconds, 1e-6), 1e-3) / 4.0) / 2.0
    out[:, col["onset_rate"]] = np.where(has, rate, -1.0)
    vmax = np.zeros(n)
    np.maximum.at(vmax, bar, notes[:, 3].astype(np.float64))
    out[:, col["velocity_max"]] = np.where(has, (vmax - 80.0) / 30.0, 0.0)
    mean_v = np.divide(np.bincount(bar, notes[:, 3], n), count, out=np.zeros(n), where=has)
    sq = np.divide(np.bincount(bar, notes[:, 3] ** 2.0, n), count, out=np.zeros(n), where=has)
    out[:, col["velocity_std"]] = np.sqrt(np.maximum(sq - mean_v**2, 0.0)) / 30.0
    offbeat = np.bincount(bar, (notes[:, 0] % grid.tpq) != 0, n)
    out[:, col["offbeat"]] = np.divide(offbeat, count, out=np.zeros(n), where=has)
    out[:, col["drums"]] = np.divide(
        count - np.bincount(_clip_bars(b.pitched_all[:, 0], bounds), minlength=n + 1)[:n],
        count,
        out=np.zeros(n),
        where=has,
    )
    out[:, col["empty"]] = (~has).astype(np.float64)

    pitched, pbar = b.pitched, b.pbar
    pcount = np.bincount(pbar, minlength=n)
    phas = pcount > 0
    low, high = np.full(n, 64.0), np.full(n, 64.0)
    if len(pitched):
        low_all, high_all = np.full(n, 128.0), np.full(n, -1.0)
        np.minimum.at(low_all, pbar, pitched[:, 2].astype(np.float64))
        np.maximum.at(high_all, pbar, pitched[:, 2].astype(np.float64))
        low, high = np.where(phas, low_all, 64.0), np.where(phas, high_all, 64.0)
    out[:, col["pitch_low"]] = (low - 64.0) / 12.0
    out[:, col["pitch_high"]] = (high - 64.0) / 12.0
    quarters = np.maximum(pitched[:, 1], 1) / grid.tpq
    length = np.bincount(pbar, np.log2(quarters), n)
    out[:, col["note_length"]] = np.divide(length, pcount, out=np.zeros(n), where=phas)
    sounding = np.bincount(pbar, np.minimum(quarters, np.diff(bounds)[pbar] / grid.tpq), n)
    out[:, col["polyphony"]] = np.log2(1.0 + sounding / (np.diff(bounds) / grid.tpq))
    out[:, col["pitch_classes"]] = (b.hist > 0).sum(1) / 12.0
    out[:, col["key_strength"]] = b.key_corr.max(1)
    return out


def _clip_bars(ticks: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Bar of each tick, with ticks outside the grid counted in an extra last bin."""
    bar = _bar_of(ticks, bounds)
    n = len(bounds) - 1
    return np.where((bar >= 0) & (bar < n), bar, n)


def bar_cues(score: symusic.Score, grid: BarGrid | MeterGrid, window: int = 2) -> np.ndarray:
    """[n_bars, len(CUE_COLUMNS)]: `bar_stats` of each bar, their mean over `CONTEXT_BARS` bars
    either side, and their mean and std over the whole piece (listeners rate a bar in the light of
    what came before, and a piece's overall character sets its level)."""
    stats = bar_stats(score, grid, window)
    n = len(stats)
    cumulative = np.concatenate([np.zeros((1, stats.shape[1])), np.cumsum(stats, 0)])
    lo = np.clip(np.arange(n) - CONTEXT_BARS, 0, n)
    hi = np.clip(np.arange(n) + CONTEXT_BARS + 1, 0, n)
    context = (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]
    mean, std = (np.broadcast_to(v, stats.shape) for v in (stats.mean(0), stats.std(0)))
    return np.concatenate([stats, context, mean, std], 1)
