"""What the genre models learn from: manifest rows, the label a piece gets (`auto`: one the
corpus has), and the splits they train, choose and report on."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from midipipe.core.errors import NothingToLearn

log = logging.getLogger(__name__)

# `genre.label: auto` tries these manifest columns in order (`emotion`: EMOPIA's quadrant).
# `period` (music21's alone) comes first so that the embedded corpus keeps its committed task.
AUTO_ORDER = ("period", "composer", "genre", "emotion", "source")


def read_manifest(path: str | Path) -> dict[str, dict]:
    cols = ["piece_id", "source", "song_id", "split", "composer", "genres", "period"]
    cols += ["emotion"]
    names = set(pq.read_schema(path).names)  # manifests written before a column existed
    return {
        r["piece_id"]: r
        for r in pq.read_table(path, columns=[c for c in cols if c in names]).to_pylist()
    }


def label_of(row: dict, label: str) -> str | None:
    """A piece's single label: a manifest column, or the first of its `genres`."""
    if label == "genre":
        return (row.get("genres") or [None])[0]
    return row.get(label) or None


@dataclass(frozen=True)
class LabelChoice:
    label: str  # the manifest column the classes come from
    rule: str  # how it was chosen, for the metrics
    classes: dict[str, int]  # learnable class -> train pieces


def learnable_classes(rows: dict[str, dict], label: str, min_class_pieces: int) -> dict[str, int]:
    """Classes of `label` with >= `min_class_pieces` train pieces and >= 2 works (songs): a
    class from a single work cannot be learnt apart from that work."""
    train: Counter = Counter()
    songs: dict[str, set] = defaultdict(set)
    for r in rows.values():
        name = label_of(r, label)
        if name is None:
            continue
        songs[name].add(r["song_id"])
        if r["split"] == "train":
            train[name] += 1
    return {c: n for c, n in sorted(train.items()) if n >= min_class_pieces and len(songs[c]) >= 2}


def choose_label(
    rows: dict[str, dict], label: str, min_class_pieces: int, order: Sequence[str] = AUTO_ORDER
) -> LabelChoice:
    """The label to learn: `label` itself, or for "auto" the first of `order` with >= 2
    learnable classes. NothingToLearn says why when none has."""
    candidates = list(order) if label == "auto" else [label]
    found = {}
    for name in candidates:
        classes = learnable_classes(rows, name, min_class_pieces)
        if len(classes) >= 2:
            rule = (
                f"first of {'/'.join(order)} with >= 2 classes of >= {min_class_pieces} "
                "train pieces from >= 2 works"
                if label == "auto"
                else "genre.label"
            )
            return LabelChoice(name, rule, classes)
        found[name] = classes
    raise NothingToLearn(
        f"no label with >= 2 classes of >= genre.min_class_pieces={min_class_pieces} train "
        f"pieces from >= 2 works (learnable classes per label tried: {found})"
    )


def splits_in_use(
    sets: dict[str, Any], size: Callable[[Any], int], unit: str, valid_role: str
) -> tuple[Any, Any, Any, str]:
    """(train, valid, test, the split reported on). An empty valid split is stood in for by
    train (`valid_role`: what valid then decides on train), an empty test split by valid;
    with no train, or nothing held out, there is nothing to learn (`NothingToLearn`)."""
    train, valid, test = sets["train"], sets["valid"], sets["test"]
    if not size(train):
        raise NothingToLearn(f"no train {unit}")
    if not size(valid) and not size(test):
        raise NothingToLearn(f"no valid or test {unit}: nothing held out to report on")
    if not size(valid):
        log.warning("no valid %s: %s use the train split", unit, valid_role)
        valid = train
    if not size(test):
        log.warning("no test %s: reporting on the valid split", unit)
        return train, valid, valid, "valid"
    return train, valid, test, "test"
