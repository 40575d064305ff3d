"""The REMI pieces the generator trains on and is scored against, with their composer ids."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from midipipe.core.errors import ParamError
from midipipe.data import composers as C
from midipipe.tokens.shards import tokens_by_split

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """One split's REMI pieces and each one's conditioning id."""

    piece_ids: list[str] = field(default_factory=list)
    pieces: list[list[int]] = field(default_factory=list)
    bar_starts: list[list[int]] = field(default_factory=list)
    composers: list[int] = field(default_factory=list)

    def joined(self, other: Corpus) -> Corpus:
        return Corpus(
            self.piece_ids + other.piece_ids,
            self.pieces + other.pieces,
            self.bar_starts + other.bar_starts,
            self.composers + other.composers,
        )


def load_corpus(tokens_dir: str | Path, manifest: str | Path, table: dict) -> dict[str, Corpus]:
    """{split: Corpus}; a piece's id comes from its manifest composer under `table`."""
    rows = pq.read_table(manifest, columns=["piece_id", "composer"]).to_pylist()
    composer_of = {r["piece_id"]: C.id_of(table, r["composer"]) for r in rows}
    out: dict[str, Corpus] = {}
    for split, items in tokens_by_split(tokens_dir, manifest).items():
        corpus = out.setdefault(split, Corpus())
        for pid, ids, bars in items:
            if ids:
                corpus.piece_ids.append(pid)
                corpus.pieces.append(ids)
                corpus.bar_starts.append(bars)
                corpus.composers.append(composer_of[pid])
    return out


def train_and_valid(
    tokens_dir: str | Path, manifest: str | Path, table: dict
) -> tuple[Corpus, Corpus]:
    """The train and valid splits; a corpus without valid pieces validates on 32 train ones."""
    data = load_corpus(tokens_dir, manifest, table)
    train, valid = data["train"], data["valid"]
    if not train.pieces:
        raise ParamError(f"no training pieces in {tokens_dir} (manifest split 'train')")
    if not valid.pieces:
        log.warning("no validation pieces: validating on the first 32 training pieces")
        valid = Corpus(*(getattr(train, f.name)[:32] for f in dataclasses.fields(Corpus)))
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
