"""The REMI pieces the generator trains on and is scored against, with their composer ids."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from midipipe.core.errors import NothingToLearn
from midipipe.core.io import iter_matching, part_files
from midipipe.data import composers as C
from midipipe.data.splits import unit_hash
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
    tokens_dir: str | Path, manifest: str | Path | pa.Table, table: dict, split: str
) -> SplitIndex:
    """Where the non-empty pieces of `split` lie in the shards, labelled with their manifest
    composer's id under `table` (what the streaming dataset reads)."""
    return split_index(tokens_dir, manifest, split, "composer", functools.partial(C.id_of, table))


def eval_corpus(
    tokens_dir: str | Path, manifest: str | Path | pa.Table, table: dict, split: str
) -> Corpus:
    """An evaluation split (valid/test: small) in memory."""
    return Corpus.of(load_pieces(split_pieces(tokens_dir, manifest, table, split)))


HELD_OUT_FRAC = 0.1  # of the train songs, when a corpus has no valid split
MAX_VALID_PIECES = 512  # validation reads at most this many pieces (a seeded draw) into memory


def train_and_valid(
    tokens_dir: str | Path, manifest: str | Path, table: dict
) -> tuple[SplitIndex, Corpus, str]:
    """The train split's index (streamed), the validation pieces in memory, and where those
    came from: the `valid` split, or, in a corpus without one, whole train songs held out
    from training (never pieces the model also trains on). At most MAX_VALID_PIECES of them,
    so memory does not grow with the corpus."""
    valid = _capped(tokens_dir, manifest, table)
    if valid.pieces:
        train = split_pieces(tokens_dir, manifest, table, "train")
        source = "valid"
    else:
        relabelled = _hold_out_songs(pq.read_table(manifest, columns=MANIFEST_COLUMNS))
        train = split_pieces(tokens_dir, relabelled, table, "train")
        valid = _capped(tokens_dir, relabelled, table)
        source = "held_out_train_songs"
        log.warning(
            "no validation pieces in %s: validating on %d pieces of train songs held out from"
            " training",
            manifest,
            len(valid.pieces),
        )
    if not len(train):
        raise NothingToLearn(f"no training pieces with tokens in {tokens_dir} (split 'train')")
    if not valid.pieces:
        raise NothingToLearn(
            f"nothing to validate on: {manifest} has no valid split and a single train song"
        )
    return train, valid, source


MANIFEST_COLUMNS = ["piece_id", "split", "song_id", "composer"]


def _capped(tokens_dir: str | Path, manifest: str | Path | pa.Table, table: dict) -> Corpus:
    """The valid split's pieces in memory, a seeded draw of MAX_VALID_PIECES when larger
    (kept in shard order)."""
    index = split_pieces(tokens_dir, manifest, table, "valid")
    if len(index) > MAX_VALID_PIECES:
        keep = np.random.default_rng(0).choice(len(index), MAX_VALID_PIECES, replace=False)
        index = index.subset(np.sort(keep))
    return Corpus.of(load_pieces(index))


def _hold_out_songs(manifest: pa.Table) -> pa.Table:
    """`manifest` with the train pieces of about HELD_OUT_FRAC of the train songs (at least
    one song when there are two) relabelled `valid`, chosen by a keyed hash of the song."""
    train = pc.equal(manifest["split"], "train")
    songs = pc.unique(manifest["song_id"].filter(train)).to_pylist()
    ranked = sorted(songs, key=lambda s: unit_hash(s, 0))
    n = min(len(songs) - 1, max(1, round(HELD_OUT_FRAC * len(songs))))
    held = pa.array(ranked[: max(n, 0)], pa.string())
    new = pc.if_else(
        pc.and_(train, pc.is_in(manifest["song_id"], held)), "valid", manifest["split"]
    )
    return manifest.set_column(manifest.schema.get_field_index("split"), "split", new)


def read_table(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def test_pieces_of(
    tokens_dir: str | Path, manifest: str | Path, composer: str | None
) -> list[tuple[list[int], list[int]]]:
    """(ids, bar_starts) of the test-split pieces of one composer (any composer if None),
    reading only their rows from the token shards."""
    table = pq.read_table(manifest, columns=["piece_id", "split", "composer"])
    test = pc.equal(table["split"], "test")
    if composer is not None:
        test = pc.and_(test, pc.equal(table["composer"], composer))
    wanted = table["piece_id"].filter(test)
    return [
        (r["ids"], r["bar_starts"])
        for r in iter_matching(
            part_files(tokens_dir),
            "piece_id",
            wanted,
            ["ids", "bar_starts"],
        )
        if r["ids"]
    ]
