"""VGMIDI: video-game piano pieces with per-measure valence/arousal traces from many listeners.

Layout: `midi/<piece>.mid` (full pieces), `phrases/<piece>_<n>.mid` (labelled excerpts),
`vgmidi_labelled.csv` (one row per phrase: `midi` = `labelled/phrases/<file>`, binary
`valence`, `arousal` in {-1, 1}), `annotations/vgmidi_raw_{1,2}.json` (`pieces`: pieceN ->
{midi, measures, ...}; `annotations`: pieceN_k -> one listener's `valence` and `arousal`
lists, one value per measure; pieceN keys are local to each JSON file).

`files: pieces` (default) yields the full pieces, with bar labels = the listeners' mean per
measure (bar 0 = first measure; measures past the piece's `measures` count are dropped) and the
number of listeners, and piece-level valence/arousal = the mean of its phrases' CSV labels
(±1 when they agree). `files: phrases` yields the phrases with their CSV labels; `both` yields
both. A piece and its phrases share a song_id (the full piece's file stem), so they never
straddle splits. emotion = the quadrant ("Q1".."Q4", as EMOPIA) of the piece-level labels.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .base import BarLabel, Piece, SourceError, inside, require_dir, require_file
from .emopia import quadrant_of

log = logging.getLogger(__name__)

SUMMARY = "VGMIDI, per-measure valence/arousal traces and labelled phrases"
GENRES = ["video-game"]


@dataclass
class VGMidiOptions:
    path: str
    files: Literal["pieces", "phrases", "both"] = "pieces"
    labelled_csv: str = "vgmidi_labelled.csv"
    annotations: list[str] = field(
        default_factory=lambda: ["annotations/vgmidi_raw_1.json", "annotations/vgmidi_raw_2.json"]
    )


@dataclass
class _Labels:
    phrases: dict[str, tuple[float, float]]  # phrase file name -> (valence, arousal)
    bars: dict[str, list[BarLabel]]  # full piece file name -> bar labels


def open_source(options: VGMidiOptions, name: str, param: str) -> Iterator[Piece]:
    root = require_dir(options.path, f"{param}.path")
    where = f"{param}.labelled_csv"
    phrases = read_phrase_labels(
        require_file(inside(root, options.labelled_csv, where), where), where
    )
    bars: dict[str, list[BarLabel]] = {}
    if options.files != "phrases":
        where = f"{param}.annotations"
        paths = [require_file(inside(root, p, where), where) for p in options.annotations]
        bars = read_bar_labels(paths, where)
    for folder in (["midi"] if options.files != "phrases" else []) + (
        ["phrases"] if options.files != "pieces" else []
    ):
        require_dir(root / folder, f"{param}.path ({folder}/)")
    return _iter(root, options, _Labels(phrases, bars), name)


def piece_stem(phrase_stem: str) -> str:
    """'<game>_<piece>_0' -> '<game>_<piece>': the full piece a phrase comes from."""
    return re.sub(r"_\d+$", "", phrase_stem)


def read_phrase_labels(csv_path: Path, param: str = "vgmidi") -> dict[str, tuple[float, float]]:
    """Phrase file name -> (valence, arousal) from the labelled CSV."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"midi", "valence", "arousal"} - set(reader.fieldnames or [])
        if missing:
            raise SourceError(f"{param}: {csv_path} has no column(s) {sorted(missing)}")
        try:
            return {
                Path(row["midi"]).name: (float(row["valence"]), float(row["arousal"]))
                for row in reader
            }
        except ValueError as error:
            raise SourceError(f"{param}: {csv_path}: {error}") from None


def read_bar_labels(json_paths: list[Path], param: str = "vgmidi") -> dict[str, list[BarLabel]]:
    """Full piece file name -> per-measure mean of all listeners' traces, with their count."""
    sums: dict[str, list[list[float]]] = {}  # midi -> per bar [valence sum, arousal sum, n]
    for json_path in json_paths:
        try:
            raw = json.loads(json_path.read_text(encoding="utf-8"))
            pieces, annotations = raw["pieces"], raw["annotations"]
        except (ValueError, KeyError, TypeError) as error:
            raise SourceError(
                f"{param}: {json_path} is not a VGMIDI annotation file "
                f"(needs 'pieces' and 'annotations'): {error!r}"
            ) from None
        unknown = overlong = 0
        for key, trace in annotations.items():
            piece = pieces.get(key.rsplit("_", 1)[0])
            if piece is None:
                unknown += 1
                continue
            measures = int(piece["measures"])
            valence, arousal = trace.get("valence") or [], trace.get("arousal") or []
            overlong += len(valence) > measures or len(arousal) > measures
            bars = sums.setdefault(piece["midi"], [[0.0, 0.0, 0] for _ in range(measures)])
            for bar, (v, a) in enumerate(zip(valence[:measures], arousal[:measures], strict=False)):
                bars[bar][0] += float(v)
                bars[bar][1] += float(a)
                bars[bar][2] += 1
        if unknown:
            log.info("%s: %d annotations of pieces it does not list, ignored", json_path, unknown)
        if overlong:
            log.info(
                "%s: %d traces longer than their piece, cut to its measures", json_path, overlong
            )
    return {
        midi: [
            BarLabel(bar=i, valence=v / n, arousal=a / n, n_raters=n)
            for i, (v, a, n) in enumerate(bars)
            if n
        ]
        for midi, bars in sums.items()
    }


def _piece_level(labels: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    if not labels:
        return None, None
    return (
        sum(v for v, _ in labels) / len(labels),
        sum(a for _, a in labels) / len(labels),
    )


def _iter(root: Path, options: VGMidiOptions, labels: _Labels, name: str) -> Iterator[Piece]:
    by_piece: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for phrase, va in labels.phrases.items():
        by_piece[piece_stem(Path(phrase).stem)].append(va)
    if options.files in ("pieces", "both"):
        for path in sorted((root / "midi").glob("*.mid")):
            valence, arousal = _piece_level(by_piece.get(path.stem, []))
            yield Piece(
                source=name,
                name=f"midi/{path.name}",
                song_id=path.stem,
                path=path,
                genres=list(GENRES),
                emotion=quadrant_of(valence, arousal),
                valence=valence,
                arousal=arousal,
                bar_labels=labels.bars.get(path.name, []),
            )
    if options.files in ("phrases", "both"):
        for path in sorted((root / "phrases").glob("*.mid")):
            valence, arousal = labels.phrases.get(path.name, (None, None))
            yield Piece(
                source=name,
                name=f"phrases/{path.name}",
                song_id=piece_stem(path.stem),
                path=path,
                genres=list(GENRES),
                emotion=quadrant_of(valence, arousal),
                valence=valence,
                arousal=arousal,
            )
