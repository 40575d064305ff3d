"""A split's token shards streamed for training, so memory does not grow with the corpus.

`split_index` keeps a few numbers per piece (part, row, length, bars, label), never its
tokens. `SampleStream` is a torch IterableDataset: each epoch, every process of a torchrun job
and every DataLoader worker in it (a slot) takes its own slice of the split's units (row
ranges of one part), draws its samples from them as a `Sampler` plans, reads one part at a
time and shuffles within a window of units. All draws come from the epoch's seed and the
slot's number, so a run repeats exactly for the same seed, process and worker counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from midipipe.core.io import part_files
from midipipe.data.splits import SPLITS

UNIT_ROWS = 256  # pieces per unit at most: a unit is what one slot reads at a time


def release_arrow_memory() -> None:
    """Hand Arrow's freed buffers back to the OS. Reading many token parts one after another
    otherwise leaves the pool's high-water mark growing with the number of parts read: peak
    RSS then grows with the corpus although one part is live at a time."""
    pa.default_memory_pool().release_unused()


@dataclass
class SplitIndex:
    """Where each non-empty piece of one split lies in the token shards, in part/row order."""

    parts: list[str]
    part: np.ndarray  # int32, the piece's part (index into `parts`)
    row: np.ndarray  # int32, its row in that part
    length: np.ndarray  # int64, its token count
    bars: np.ndarray  # int64, its bar count
    label: np.ndarray  # int64, its label id (0 when none was asked for)

    def __len__(self) -> int:
        return len(self.part)

    @property
    def tokens(self) -> int:
        return int(self.length.sum())

    def subset(self, keep: np.ndarray) -> SplitIndex:
        return SplitIndex(
            self.parts,
            self.part[keep],
            self.row[keep],
            self.length[keep],
            self.bars[keep],
            self.label[keep],
        )


@dataclass(frozen=True)
class Piece:
    ids: np.ndarray  # int32 token ids
    bar_starts: np.ndarray  # int32 token offsets of the bars
    label: int


def split_index(
    tokens_dir: str | Path,
    manifest: str | Path | pa.Table,
    split: str,
    label_column: str | None = None,
    label_of: Callable[[str | None], int] | None = None,
) -> SplitIndex:
    """The pieces of `split` (by the manifest) with at least one token; `label_of` maps the
    manifest's `label_column` value to the label id. Reads one part at a time. The manifest
    is a path or a table already read (a relabelled one)."""
    parts = [str(p) for p in part_files(tokens_dir)]
    if not parts:
        raise FileNotFoundError(f"no part-*.parquet in {tokens_dir}")
    columns = ["piece_id", "split"] + ([label_column] if label_column else [])
    if isinstance(manifest, pa.Table):
        table = manifest.select(columns)
    else:
        table = pq.read_table(manifest, columns=columns)
    table = table.filter(pc.equal(table["split"], split))
    wanted = table["piece_id"].combine_chunks()
    labels = np.zeros(len(wanted), dtype=np.int64)
    if label_column and label_of is not None:
        encoded = table[label_column].combine_chunks().dictionary_encode()
        ids = np.array([label_of(v) for v in encoded.dictionary.to_pylist()] or [0])
        labels = np.where(
            encoded.indices.is_null().to_numpy(zero_copy_only=False),
            label_of(None),
            ids[encoded.indices.fill_null(0).to_numpy()],
        ).astype(np.int64)
    found: list[tuple[np.ndarray, ...]] = []
    for k, path in enumerate(parts):
        part = pq.read_table(path, columns=["piece_id", "ids", "bar_starts"])
        pos = pc.fill_null(pc.index_in(part["piece_id"], value_set=wanted), -1).to_numpy()
        length, bars = (
            pc.fill_null(pc.list_value_length(part[name]), 0).to_numpy()
            for name in ("ids", "bar_starts")
        )
        rows = np.flatnonzero((pos >= 0) & (length > 0))
        found.append((np.full(len(rows), k), rows, length[rows], bars[rows], labels[pos[rows]]))
        del part
        release_arrow_memory()
    part_of, row, length, bars, label = (np.concatenate(c) for c in zip(*found, strict=True))
    return SplitIndex(
        parts,
        part_of.astype(np.int32),
        row.astype(np.int32),
        length.astype(np.int64),
        bars.astype(np.int64),
        label.astype(np.int64),
    )


def split_rows(
    tokens_dir: str | Path, manifest: str | Path, split: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(piece_id, ids, bar_starts) of every piece of `split` (by the manifest), in part
    order, as int32 views of one part at a time: for stages that cut each piece once into
    small pieces of their own (phrases, chunks)."""
    table = pq.read_table(manifest, columns=["piece_id", "split"])
    wanted = table.filter(pc.equal(table["split"], split))["piece_id"].combine_chunks()
    for path in part_files(tokens_dir):
        part = pq.read_table(path)
        part = part.filter(pc.is_in(part["piece_id"], value_set=wanted))
        ids, bars = (part[name].combine_chunks() for name in ("ids", "bar_starts"))
        flat, offsets = ids.values.to_numpy(), ids.offsets.to_numpy()
        bar_flat, bar_offsets = bars.values.to_numpy(), bars.offsets.to_numpy()
        for r, pid in enumerate(part["piece_id"].to_pylist()):
            yield (
                pid,
                flat[offsets[r] : offsets[r + 1]],
                bar_flat[bar_offsets[r] : bar_offsets[r + 1]],
            )


def rows_by_split(
    tokens_dir: str | Path, manifest: str | Path
) -> dict[str, Iterator[tuple[str, np.ndarray, np.ndarray]]]:
    """{split: `split_rows`}, each read lazily when iterated."""
    return {s: split_rows(tokens_dir, manifest, s) for s in SPLITS}


class PartReader:
    """Pieces of one part at a time: the last part read is kept, zero-copy numpy views."""

    def __init__(self, index: SplitIndex):
        self.index = index
        self.current = -1
        self.columns: tuple[np.ndarray, ...] = ()

    def _load(self, part: int) -> None:
        self.columns = ()
        release_arrow_memory()  # the last part's buffers: else the pool keeps them per part read
        table = pq.read_table(self.index.parts[part], columns=["ids", "bar_starts"])
        arrays = [table[name].combine_chunks() for name in ("ids", "bar_starts")]
        self.columns = tuple(x for a in arrays for x in (a.values.to_numpy(), a.offsets.to_numpy()))
        self.current = part

    def piece(self, i: int) -> Piece:
        """The `i`-th piece of the index."""
        part, row = int(self.index.part[i]), int(self.index.row[i])
        if part != self.current:
            self._load(part)
        ids, ids_off, bars, bars_off = self.columns
        return Piece(
            ids[ids_off[row] : ids_off[row + 1]],
            bars[bars_off[row] : bars_off[row + 1]],
            int(self.index.label[i]),
        )


def iter_pieces(index: SplitIndex) -> Iterator[Piece]:
    """Every piece of the index in order, one part in memory at a time."""
    reader = PartReader(index)
    for i in range(len(index)):
        yield reader.piece(i)


class TokenLists:
    """The token ids of every piece of the index, re-iterable (each pass streams the shards
    again): for scans that pass over a split several times without holding it."""

    def __init__(self, index: SplitIndex) -> None:
        self.index = index

    def __iter__(self) -> Iterator[np.ndarray]:
        return (p.ids for p in iter_pieces(self.index))


def load_pieces(index: SplitIndex) -> list[Piece]:
    """All pieces of an evaluation split (valid/test, small) in memory as int32 arrays."""
    return [Piece(p.ids.copy(), p.bar_starts.copy(), p.label) for p in iter_pieces(index)]


def units(index: SplitIndex, slots: int) -> list[np.ndarray]:
    """The index cut into units of consecutive pieces of one part, at least `slots` of them
    when there are that many pieces, so that every slot has something to read."""
    size = max(1, min(UNIT_ROWS, len(index) // max(1, slots)))
    bounds = np.flatnonzero(np.diff(index.part)) + 1
    out: list[np.ndarray] = []
    for chunk in np.split(np.arange(len(index)), bounds):
        out += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return out


class Sampler(Protocol):
    """What a training stage draws from pieces; must pickle (it goes to DataLoader workers)."""

    def plan(self, length: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` draws over pieces of these lengths: a [n, 2] int array of (piece, kind)."""

    def sample(self, piece: Piece, kind: int, rng: np.random.Generator) -> Any:
        """One training sample of a piece."""

    def collate(self, samples: list, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A batch of samples."""


def slot_batches(total: int, batch_size: int, world: int, workers: int) -> list[int]:
    """Batches per slot (process-major): every process gets as many, `total` samples rounded
    up to whole batches, so no process of a torchrun job waits on a shorter one."""
    per_process = math.ceil(math.ceil(total / world) / batch_size)
    k = max(1, workers)
    return [per_process // k + (w < per_process % k) for _ in range(world) for w in range(k)]


class SampleStream(IterableDataset):
    """One epoch of batches for this process (`rank` of `world`) and DataLoader worker: the
    slot's units (shuffled by the epoch seed, dealt round-robin; a corpus with fewer units
    than slots lends a unit to several), its draws, and batches shuffled within
    `shuffle_units` units at a time."""

    def __init__(
        self,
        index: SplitIndex,
        sampler: Sampler,
        samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shuffle_units: int = 4,
    ):
        super().__init__()
        self.index, self.sampler = index, sampler
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.rank, self.world, self.shuffle_units = rank, world, shuffle_units

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slots = self.world * workers
        slot = self.rank * workers + worker
        n_batches = slot_batches(self.samples, self.batch_size, self.world, workers)[slot]
        if n_batches == 0 or len(self.index) == 0:
            return
        all_units = units(self.index, slots)
        order = np.random.default_rng([self.seed]).permutation(len(all_units))
        mine = [all_units[u] for u in order[slot::slots]] or [all_units[order[slot % len(order)]]]
        rng = np.random.default_rng([self.seed, slot])
        pieces = np.concatenate(mine)
        draws = self.sampler.plan(self.index.length[pieces], n_batches * self.batch_size, rng)
        draws = draws[np.argsort(draws[:, 0], kind="stable")]  # pieces are in unit order
        ends = np.searchsorted(draws[:, 0], np.cumsum([len(u) for u in mine]))
        reader = PartReader(self.index)
        buffer: list = []
        for first in range(0, len(mine), self.shuffle_units):
            lo = ends[first - 1] if first else 0
            hi = ends[min(first + self.shuffle_units, len(mine)) - 1]
            for j, kind in draws[lo:hi].tolist():
                buffer.append(self.sampler.sample(reader.piece(int(pieces[j])), kind, rng))
            rng.shuffle(buffer)
            while len(buffer) >= self.batch_size:
                yield self.sampler.collate(buffer[-self.batch_size :], rng)
                del buffer[-self.batch_size :]


def epoch_seed(rng: torch.Generator) -> int:
    """A stream's seed drawn from the training loop's checkpointed generator."""
    return int(torch.randint(2**31 - 1, (1,), generator=rng))


def loader(stream: SampleStream, workers: int, device: torch.device) -> DataLoader:
    """Batches from `workers` processes (0: this one), pinned for non-blocking copies to CUDA."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
