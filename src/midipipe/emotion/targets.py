"""Valence/arousal targets in [-1, 1] for every bar that has one, from whatever a corpus labels.

Priority per piece: listeners' per-measure traces (VGMIDI, `data/labels/bar_va.parquet`,
averaged over annotators with their count) are the only true bar labels; otherwise the piece's
own label is spread over its bars with weight `piece_label_weight`:
- an EMOPIA-style quadrant `Q1`..`Q4` -> `quadrants` (signs from Russell's circumplex,
  magnitudes a param: default 0.5, the middle of the quadrant's half-axes);
- an emotion word (XMIDI's eleven) -> `words`: NRC VAD Lexicon v1 scores (Mohammad, "Obtaining
  Reliable Human Ratings of Valence, Arousal, and Dominance for 20,000 English Words", ACL 2018;
  https://saifmohammad.com/WebPages/nrc-vad.html) rescaled from [0, 1] to [-1, 1] as 2x - 1;
- binary piece valence/arousal (VGMIDI's phrase labels, ±1 or their mean) -> times
  `binary_scale`.

VGMIDI traces hold one value per 4 quarter notes of the MIDI (its "measures" count matches the
piece's length in 4/4 bars whatever the time signature), so they are mapped onto MuseTok's bars
by time: a bar's target is the overlap-weighted mean of the measures it spans, with the fewest
raters among them (`measure_quarters: 0` instead reads `bar_va.bar` as a MuseTok bar index).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.core.errors import BadMidi
from midipipe.core.io import iter_matching, part_files
from midipipe.data.midi import load_score
from midipipe.data.store import Corpus
from midipipe.emotion.rules import CUE_COLUMNS, BarGrid, RuleParams, bar_cues, bar_grid, combine

log = logging.getLogger(__name__)

# XMIDI's emotion words: NRC VAD v1 (valence, arousal), each 2 * score - 1.
NRC_VAD_WORDS: dict[str, tuple[float, float]] = {
    "angry": (-0.756, 0.660),
    "exciting": (0.900, 0.584),
    "fear": (-0.854, 0.680),
    "funny": (0.836, 0.220),
    "happy": (1.000, 0.470),
    "lazy": (-0.216, -0.472),
    "magnificent": (1.000, 0.360),
    "quiet": (0.584, -0.790),
    "romantic": (0.872, 0.062),
    "sad": (-0.550, -0.334),
    "warm": (0.520, -0.376),
}
QUADRANTS: dict[str, tuple[float, float]] = {
    "Q1": (0.5, 0.5),  # happy, excited
    "Q2": (-0.5, 0.5),  # tense, angry
    "Q3": (-0.5, -0.5),  # sad, depressed
    "Q4": (0.5, -0.5),  # calm, relaxed
}


@dataclass
class TargetParams:
    """`emotion.targets`: how each corpus's labels become valence/arousal in [-1, 1]."""

    quadrants: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in QUADRANTS.items()}
    )
    words: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in NRC_VAD_WORDS.items()}
    )
    binary_scale: float = 0.5  # piece-level ±1 valence/arousal -> ±binary_scale
    piece_label_weight: float = 0.5  # loss weight of bars labelled only by their piece (0: unused)
    measure_quarters: float = 4.0  # quarter notes per bar_va row (VGMIDI: 4); 0 = MuseTok bars
    min_raters: int = 1  # rated bars with fewer listeners are neither trained on nor scored

    def __post_init__(self) -> None:
        for name in ("quadrants", "words"):
            for label, coords in getattr(self, name).items():
                if len(coords) != 2 or not all(-1 <= float(c) <= 1 for c in coords):
                    raise ValueError(
                        f"emotion.targets.{name}.{label}: expected [valence, arousal] in "
                        f"[-1, 1], got {coords!r}"
                    )


def piece_target(
    emotion: str | None, valence: float | None, arousal: float | None, p: TargetParams
) -> tuple[float, float] | None:
    """A piece's (valence, arousal) from its quadrant or emotion word, else its binary labels."""
    if emotion:
        coords = p.quadrants.get(emotion) or p.words.get(emotion.lower())
        if coords is not None:
            return float(coords[0]), float(coords[1])
    if valence is not None and arousal is not None:
        v, a = np.clip(np.array([valence, arousal]) * p.binary_scale, -1.0, 1.0)
        return float(v), float(a)
    return None


def measure_targets(
    grid: BarGrid, labels: np.ndarray, measure_quarters: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar targets [n_bars, 2] (NaN where no labelled measure overlaps) and rater counts
    [n_bars] from label rows [bar, valence, arousal, n_raters]."""
    targets = np.full((grid.n_bars, 2), np.nan)
    raters = np.zeros(grid.n_bars, np.int64)
    if len(labels) == 0:
        return targets, raters
    index = labels[:, 0].astype(np.int64)
    if measure_quarters <= 0:
        keep = (index >= 0) & (index < grid.n_bars)
        targets[index[keep]] = labels[keep, 1:3]
        raters[index[keep]] = labels[keep, 3]
        return targets, raters
    edges = (grid.first_bar + np.arange(grid.n_bars + 1)) * grid.bar_quarters
    lo = np.maximum(edges[:-1, None], index[None, :] * measure_quarters)
    hi = np.minimum(edges[1:, None], (index[None, :] + 1) * measure_quarters)
    overlap = np.clip(hi - lo, 0.0, None)  # [bars, measures] in quarter notes
    total = overlap.sum(1)
    has = total > 0
    targets[has] = overlap[has] @ labels[:, 1:3] / total[has, None]
    n = np.where(overlap > 0, labels[None, :, 3], np.iinfo(np.int64).max).min(1)
    raters[has] = n[has]
    return targets, raters


@dataclass
class Bars:
    """The bars of every labelled piece, flat: piece k's bars are rows offsets[k]:offsets[k+1]."""

    piece_ids: list[str]
    groups: list[str]  # song_id per piece: clips of one song stay on one side of a fold
    splits: list[str]
    offsets: np.ndarray  # [pieces + 1]
    targets: np.ndarray  # [bars, 2] valence, arousal; NaN where unknown
    weights: np.ndarray  # [bars]: 1 listener-rated, piece_label_weight piece-labelled, 0 none
    rated: np.ndarray  # [bars] bool: listener-rated with >= min_raters (what metrics score)
    piece_targets: np.ndarray  # [pieces, 2]: the piece's own label, NaN where it has none
    cues: np.ndarray  # [bars, len(rules.CUE_COLUMNS)]: `rules.bar_cues`, the rule cues first
    rules: np.ndarray  # [bars, 2]: the rule-based estimate (not learned)
    tokens: list[tuple[list[int], list[int]]]  # MuseTok (ids, bar_starts) per piece
    music: Sequence[bytes] = ()  # each piece's MIDI bytes (read from the store on access)

    def rows(self, pieces: np.ndarray) -> np.ndarray:
        """Bar rows of the given piece indices, in order."""
        if len(pieces) == 0:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(self.offsets[k], self.offsets[k + 1]) for k in pieces])

    def trainable(self, pieces: np.ndarray) -> np.ndarray:
        """Bar rows of these pieces that carry a target (weight > 0)."""
        rows = self.rows(pieces)
        return rows[self.weights[rows] > 0]


def labelled(manifest: list[dict], bar_va: list[dict], p: TargetParams) -> list[dict]:
    """Manifest rows of the pieces with listener bar labels or (when piece labels are used)
    a piece label, each with its `bar_labels` array [bar, valence, arousal, n_raters]."""
    by_piece: dict[str, list] = {}
    for r in bar_va:
        by_piece.setdefault(r["piece_id"], []).append(
            (r["bar"], r["valence"], r["arousal"], r["n_raters"])
        )
    out = []
    for row in manifest:
        bars = np.array(sorted(by_piece.get(row["piece_id"], [])), np.float64).reshape(-1, 4)
        bars = bars[bars[:, 3] >= p.min_raters]
        target = piece_target(row.get("emotion"), row.get("valence"), row.get("arousal"), p)
        if len(bars) or (target is not None and p.piece_label_weight > 0):
            out.append({**row, "bar_labels": bars, "piece_target": target})
    return out


def collect(
    pieces: list[dict],
    tokens_dir: str | Path,
    corpus: Corpus,
    p: TargetParams,
    rules: RuleParams,
) -> Bars:
    """Join labelled pieces (from `labelled`) with their MuseTok tokens and MIDI: bar targets on
    MuseTok's bars, and the rule cues and estimate of every bar. Pieces without tokens are
    skipped."""
    wanted = pa.array([r["piece_id"] for r in pieces], pa.string())
    tokens = {
        r["piece_id"]: (r["ids"], r["bar_starts"])
        for r in iter_matching(
            part_files(tokens_dir),
            "piece_id",
            wanted,
            ["piece_id", "ids", "bar_starts"],
        )
        if r["bar_starts"]
    }
    kept, grids, cues = [], [], []
    for row in pieces:
        if row["piece_id"] not in tokens:
            continue
        try:
            score = load_score(corpus.music(row["piece_id"]))
            grid = bar_grid(score, len(tokens[row["piece_id"]][1]))
        except (BadMidi, ValueError) as exc:
            log.warning("skipping %s: %s", row["piece_id"], exc)
            continue
        kept.append(row)
        grids.append(grid)
        cues.append(bar_cues(score, grid, rules.window))
    if len(kept) < len(pieces):
        log.info(
            "%d of %d labelled pieces have no MuseTok tokens or MIDI; skipped",
            len(pieces) - len(kept),
            len(pieces),
        )
    targets, weights, rated, piece_targets = [], [], [], []
    for row, grid in zip(kept, grids, strict=True):
        bar_t, raters = measure_targets(grid, row["bar_labels"], p.measure_quarters)
        has_bar = ~np.isnan(bar_t[:, 0]) & (raters >= p.min_raters)
        piece = row["piece_target"]
        piece_targets.append(piece if piece is not None else (np.nan, np.nan))
        if len(row["bar_labels"]) or piece is None:  # listener-rated piece: its traces only
            w = has_bar.astype(np.float64)
        else:
            bar_t = np.tile(np.asarray(piece, np.float64), (grid.n_bars, 1))
            w = np.full(grid.n_bars, p.piece_label_weight)
        targets.append(bar_t)
        weights.append(w)
        rated.append(has_bar)
    lengths = [g.n_bars for g in grids]
    all_cues = _concat(cues, (0, len(CUE_COLUMNS)))
    return Bars(
        piece_ids=[r["piece_id"] for r in kept],
        groups=[r["song_id"] for r in kept],
        splits=[r["split"] for r in kept],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        targets=_concat(targets, (0, 2)),
        weights=_concat(weights, (0,)),
        rated=_concat(rated, (0,)).astype(bool),
        piece_targets=np.array(piece_targets, np.float64).reshape(-1, 2),
        cues=all_cues,
        rules=combine(all_cues, rules),
        tokens=[tokens[r["piece_id"]] for r in kept],
        music=corpus.lazy([r["piece_id"] for r in kept]),
    )


def _concat(arrays: list[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty)


def read_labels(manifest: str | Path, bar_va: str | Path, p: TargetParams) -> list[dict]:
    """`labelled` on the organize stage's files."""
    columns = ["piece_id", "song_id", "split", "emotion", "valence", "arousal"]
    rows = pq.read_table(manifest, columns=columns).to_pylist()
    bar_rows = pq.read_table(bar_va).to_pylist() if Path(bar_va).exists() else []
    return labelled(rows, bar_rows, p)
