"""What the genre models learn from: manifest rows, the label a piece gets, and the splits
they train, choose and report on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def read_manifest(path: str | Path) -> dict[str, dict]:
    cols = ["piece_id", "source", "path", "song_id", "split", "composer", "genres", "period"]
    return {r["piece_id"]: r for r in pq.read_table(path, columns=cols).to_pylist()}


def label_of(row: dict, label: str) -> str | None:
    """A piece's single label: a manifest column, or the first of its `genres`."""
    if label == "genre":
        return (row.get("genres") or [None])[0]
    return row.get(label) or None


def splits_in_use(
    sets: dict[str, Any], size: Callable[[Any], int], unit: str, valid_role: str
) -> tuple[Any, Any, Any, str]:
    """(train, valid, test, the split reported on). An empty valid split is stood in for by
    train (`valid_role`: what valid then decides on train), an empty test split by valid."""
    train, valid, test = sets["train"], sets["valid"], sets["test"]
    if not size(valid):
        log.warning("no valid %s: %s use the train split", unit, valid_role)
        valid = train
    if not size(test):
        log.warning("no test %s: reporting on the valid split", unit)
        return train, valid, valid, "valid"
    return train, valid, test, "test"
