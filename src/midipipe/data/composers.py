"""Stage 02: composer ids for conditioning. 0 = unconditional, 1..K frequent, K+1 = OTHER."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

UNCONDITIONAL = 0
ANY = "any"  # the name users give for the unconditional id


def bucket(composers: list[str | None], min_pieces: int) -> dict:
    """Composers with at least `min_pieces` pieces get ids 1..K by descending count (ties by
    name); the rest share OTHER. Pieces with no known composer train the unconditional id."""
    if min_pieces < 1:
        raise ValueError(f"composers.min_pieces must be >= 1, got {min_pieces}")
    counts = Counter(c for c in composers if c)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    frequent = [(name, n) for name, n in ranked if n >= min_pieces]
    rare = {name: n for name, n in ranked if n < min_pieces}
    other_id = len(frequent) + 1
    return {
        "min_pieces": min_pieces,
        "unconditional_id": UNCONDITIONAL,
        "other_id": other_id,
        "n_ids": other_id + 1,
        "composers": [{"name": n, "id": i, "count": c} for i, (n, c) in enumerate(frequent, 1)],
        "other": {"count": sum(rare.values()), "members": rare},
        "unknown_pieces": sum(1 for c in composers if not c),
    }


def id_of(table: dict, composer: str | None) -> int:
    """The conditioning id of a composer name under a `bucket` table."""
    if not composer:
        return UNCONDITIONAL
    for entry in table["composers"]:
        if entry["name"] == composer:
            return entry["id"]
    return table["other_id"]


def from_manifest(manifest: str | Path, min_pieces: int) -> dict:
    composers = pq.read_table(manifest, columns=["composer"]).column("composer").to_pylist()
    return bucket(composers, min_pieces)


def _known_names(table: dict) -> list[str]:
    return [c["name"] for c in table["composers"]] + [ANY]


def composer_id_of(table: dict, name: str) -> tuple[str, int]:
    """(canonical name, id) for a composer name (case-insensitive); unknown names fail with
    the list of known ones."""
    if name.lower() == ANY:
        return ANY, UNCONDITIONAL
    for entry in table["composers"]:
        if entry["name"].lower() == name.lower():
            return entry["name"], entry["id"]
    known = ", ".join(_known_names(table))
    raise ValueError(f"unknown composer {name!r}; known: {known}")
