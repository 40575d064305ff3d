"""The REMI pieces the generator trains on and is scored against, with their composer ids."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from midipipe.core.errors import ParamError
from midipipe.data import composers as C
from midipipe.tokens.dataset import Piece, SplitIndex, load_pieces, split_index

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """One evaluation split's REMI pieces in memory (int32 arrays) and their conditioning ids."""

    pieces: list[np.ndarray] = field(default_factory=list)
    bar_starts: list[np.ndarray] = field(default_factory=list)
    composers: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, pieces: Iterable[Piece]) -> Corpus:
        out = cls()
        for piece in pieces:
            out.pieces.append(piece.ids)
            out.bar_starts.append(piece.bar_starts)
            out.composers.append(piece.label)
        return out

    def __iter__(self) -> Iterator[Piece]:
        for ids, bars, composer in zip(self.pieces, self.bar_starts, self.composers, strict=True):
            yield Piece(ids, bars, composer)

    def joined(self, other: Corpus) -> Corpus:
        return Corpus(
            self.pieces + other.pieces,
            self.bar_starts + other.bar_starts,
            self.composers + other.composers,
        )


def split_pieces(
    tokens_dir: str | Path, manifest: str | Path, table: dict, split: str
) -> SplitIndex:
    """Where the non-empty pieces of `split` lie in the shards, labelled with their manifest
    composer's id under `table` (what the streaming dataset reads)."""
    return split_index(tokens_dir, manifest, split, "composer", functools.partial(C.id_of, table))


def eval_corpus(tokens_dir: str | Path, manifest: str | Path, table: dict, split: str) -> Corpus:
    """An evaluation split (valid/test: small) in memory."""
    return Corpus.of(load_pieces(split_pieces(tokens_dir, manifest, table, split)))


def train_and_valid(
    tokens_dir: str | Path, manifest: str | Path, table: dict
) -> tuple[SplitIndex, Corpus]:
    """The train split's index (streamed) and the valid split in memory; a corpus without
    valid pieces validates on 32 train ones."""
    train = split_pieces(tokens_dir, manifest, table, "train")
    if not len(train):
        raise ParamError(f"no training pieces in {tokens_dir} (manifest split 'train')")
    valid = eval_corpus(tokens_dir, manifest, table, "valid")
    if not valid.pieces:
        log.warning("no validation pieces: validating on the first 32 training pieces")
        valid = Corpus.of(load_pieces(train.subset(np.arange(min(32, len(train))))))
    return train, valid


def read_table(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def test_pieces_of(
    tokens_dir: str | Path, manifest: str | Path, composer: str | None
) -> list[tuple[list[int], list[int]]]:
    """(ids, bar_starts) of the test-split pieces of one composer (any composer if None),
    reading only their rows from the token shards."""
    rows = pq.read_table(manifest, columns=["piece_id", "split", "composer"]).to_pylist()
    wanted = {
        r["piece_id"]
        for r in rows
        if r["split"] == "test" and (composer is None or r["composer"] == composer)
    }
    out: list[tuple[list[int], list[int]]] = []
    for part in sorted(Path(tokens_dir).glob("part-*.parquet")) if wanted else []:
        rows = pq.read_table(part, filters=[("piece_id", "in", sorted(wanted))]).to_pylist()
        out += [(r["ids"], r["bar_starts"]) for r in rows if r["ids"]]
    return out
