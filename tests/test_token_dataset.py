"""The streaming token dataset: seeded repeatability, per-rank and per-worker slices, and the
generator's window draws read from shards as they are from memory."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from midipipe.core.params import TrainParams
from midipipe.generator import train as gt
from midipipe.generator import windows as gd
from midipipe.generator.gpt import GPT, GPTConfig
from midipipe.tokens.dataset import (
    SampleStream,
    load_pieces,
    loader,
    slot_batches,
    split_index,
)
from midipipe.tokens.shards import TOKENS_SCHEMA
from midipipe.training.fit import Fit, fit

N_PIECES = 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 pieces in 3 parts; piece k is k+10 repeated 5 + k tokens (k = 7 is empty); every
    fifth is valid; composer 'c<k % 3>'."""
    root = tmp_path_factory.mktemp("shards")
    tokens = root / "tokens"
    tokens.mkdir()
    rows = [
        {"piece_id": f"p{k}", "ids": [] if k == 7 else [k + 10] * (5 + k), "bar_starts": [0]}
        for k in range(N_PIECES)
    ]
    for i, lo in enumerate(range(0, N_PIECES, 16)):
        pq.write_table(
            pa.Table.from_pylist(rows[lo : lo + 16], schema=TOKENS_SCHEMA),
            tokens / f"part-{i:05d}.parquet",
        )
    manifest = pa.table(
        {
            "piece_id": [f"p{k}" for k in range(N_PIECES)],
            "split": ["valid" if k % 5 == 4 else "train" for k in range(N_PIECES)],
            "composer": [f"c{k % 3}" if k != 1 else None for k in range(N_PIECES)],
        }
    )
    pq.write_table(manifest, root / "manifest.parquet")
    return tokens, root / "manifest.parquet"


def label_of(name):
    return 0 if name is None else int(name[1:]) + 1


def train_index(shards):
    return split_index(*shards, "train", "composer", label_of)


CFG = gd.WindowConfig(context=8, composer_dropout=0.0, token_dropout=0.0, start_frac=0.3)


def stream(index, seed, rank=0, world=1, samples=64):
    return SampleStream(index, gd.WindowSampler(CFG), samples, 4, seed, rank, world, 2)


def pieces_of(batches) -> set[int]:
    """The pieces a run of batches read (a piece's tokens are its number + 10)."""
    return {int(t) - 10 for b in batches for t in b["targets"].flatten() if t >= 10}


def test_index_keeps_the_split_non_empty_pieces_and_labels(shards):
    index = train_index(shards)
    expected = [k for k in range(N_PIECES) if k % 5 != 4 and k != 7]
    assert len(index) == len(expected)
    assert index.length.tolist() == [5 + k for k in expected]
    assert index.label.tolist() == [0 if k == 1 else k % 3 + 1 for k in expected]
    valid = load_pieces(split_index(*shards, "valid", "composer", label_of))
    assert [int(p.ids[0]) - 10 for p in valid] == list(range(4, N_PIECES, 5))
    assert all(len(p.ids) == p.ids[0] - 5 for p in valid)


def test_a_seed_repeats_and_another_differs(shards):
    index = train_index(shards)
    a, b, c = (list(stream(index, s)) for s in (5, 5, 6))
    assert len(a) == 16 and all(b["inputs"].shape[0] == 4 for b in a)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    assert not all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_read_disjoint_slices_in_equal_steps(shards, workers):
    index = train_index(shards)
    runs = [
        list(loader(stream(index, 3, rank, 2), workers, torch.device("cpu"))) for rank in (0, 1)
    ]
    assert len(runs[0]) == len(runs[1]) == sum(slot_batches(64, 4, 2, workers)[: max(1, workers)])
    read = [pieces_of(r) for r in runs]
    assert read[0] and read[1] and not read[0] & read[1]
    again = list(loader(stream(index, 3, 0, 2), workers, torch.device("cpu")))
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(runs[0], again, strict=True))


def test_streamed_windows_match_the_in_memory_draws(shards):
    """One process, one worker: the stream reads every piece, and its windows mix openings
    and pieces as `train_batches` over the same pieces in memory does."""
    index = train_index(shards)
    pieces = [p.ids.tolist() for p in load_pieces(index)]
    rng, labels = torch.Generator(), index.label.tolist()
    memory = [b for e in range(40) for b in gd.train_batches(pieces, labels, CFG, 4, e, rng)]
    streamed = list(stream(index, 1, samples=40 * gd.epoch_windows(pieces, CFG)))
    assert pieces_of(streamed) == pieces_of(memory) == {p[0] - 10 for p in pieces}
    for stat in (_opening_share, _long_share):
        assert abs(stat(streamed) - stat(memory)) < 0.03


def _opening_share(batches) -> float:
    return torch.cat([b["inputs"][:, 0] == CFG.bos_id for b in batches]).float().mean().item()


def _long_share(batches) -> float:
    """Windows of the longer half of the pieces (number >= 20)."""
    firsts = torch.cat([b["targets"][:, 0] for b in batches])
    return (firsts >= 30).float().mean().item()


@pytest.mark.usefixtures("one_thread")
def test_stage_08_feeding_trains_and_repeats_with_loader_workers(shards, tmp_path):
    """`generator.train.train_stream` with two DataLoader workers through `training.fit`:
    two runs from one seed end with the same weights."""
    index = train_index(shards)
    tp = TrainParams(epochs=1, batch_size=4, device="cpu", precision="fp32", loader_workers=2)
    cfg = dataclasses.replace(CFG, max_windows=24)
    n = gd.total_windows(index.length, cfg)

    def run(name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        config = GPTConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, d_ff=32, context=8)
        job = Fit(
            model=GPT(dataclasses.replace(config, n_composers=4)),
            train_batches=lambda epoch, rng: gt.train_stream(index, cfg, n, tp, rng),
            steps_per_epoch=-(-n // tp.batch_size),
            loss=gd.loss,
            evaluate=lambda m: {"valid_loss": 0.0},
            sharded=True,
        )
        fit(job, tp, tmp_path / name, save_best=lambda m: None, fingerprint={})
        assert [h["step"] for h in job.history] == [6]
        return job.model.state_dict()

    a, b = run("a"), run("b")
    assert all(torch.equal(a[k], b[k]) for k in a)
