"""Where the generator and the VAE validate: the valid split, or whole train songs held out."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from midipipe.core.errors import NothingToLearn
from midipipe.generator.corpus import train_and_valid

TABLE = {"composers": [{"name": "a", "id": 1}], "n_ids": 3, "other_id": 2}


def make(tmp_path, plan):
    """`plan`: (song, split) per piece; piece k's tokens are all k + 10, so they name it."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    pids = [f"p{k:03d}" for k in range(len(plan))]
    pq.write_table(
        pa.table(
            {
                "piece_id": pids,
                "ids": [[k + 10] * 6 for k in range(len(plan))],
                "bar_starts": [[0, 3] for _ in plan],
            }
        ),
        tokens / "part-00000.parquet",
    )
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(
        pa.table(
            {
                "piece_id": pids,
                "split": [split for _, split in plan],
                "song_id": [song for song, _ in plan],
                "composer": ["a"] * len(plan),
            }
        ),
        manifest,
    )
    return tokens, manifest


def piece_numbers(index_or_corpus) -> set[int]:
    return {int(ids[0]) - 10 for ids in index_or_corpus.pieces}


def test_the_valid_split_is_used_when_there_is_one(tmp_path):
    tokens, manifest = make(tmp_path, [("s1", "train"), ("s2", "train"), ("s3", "valid")])
    train, valid, source = train_and_valid(tokens, manifest, TABLE)
    assert source == "valid" and piece_numbers(valid) == {2} and len(train) == 2


def test_without_a_valid_split_whole_train_songs_are_held_out(tmp_path):
    plan = [(f"song{k // 2}", "train") for k in range(40)] + [("t", "test")]
    tokens, manifest = make(tmp_path, plan)
    train, valid, source = train_and_valid(tokens, manifest, TABLE)
    assert source == "held_out_train_songs"
    held = piece_numbers(valid)
    trained = set(np.asarray(train.row).tolist())  # one part: row k is piece k
    assert held and not held & trained and 40 not in held | trained  # test stays out
    assert held | trained == set(range(40))
    for k in held:  # a song is held out whole
        assert k ^ 1 in held
    assert len(held) == 4  # a tenth of 20 songs, two pieces each


def test_nothing_to_learn_is_a_skip_not_a_crash(tmp_path):
    tokens, manifest = make(tmp_path, [("s1", "test"), ("s2", "valid")])
    with pytest.raises(NothingToLearn, match="no training pieces"):
        train_and_valid(tokens, manifest, TABLE)
    (tmp_path / "one").mkdir()
    tokens, manifest = make(tmp_path / "one", [("s1", "train"), ("s1", "train")])
    with pytest.raises(NothingToLearn, match="single train song"):
        train_and_valid(tokens, manifest, TABLE)


def test_validation_memory_is_capped(tmp_path, monkeypatch):
    from midipipe.generator import corpus

    monkeypatch.setattr(corpus, "MAX_VALID_PIECES", 3)
    plan = [(f"s{k}", "valid") for k in range(10)] + [("t", "train")]
    tokens, manifest = make(tmp_path, plan)
    _, valid, source = train_and_valid(tokens, manifest, TABLE)
    held = sorted(piece_numbers(valid))
    assert source == "valid" and len(held) == 3 and set(held) <= set(range(10))
    _, again, _ = train_and_valid(tokens, manifest, TABLE)
    assert sorted(piece_numbers(again)) == held  # seeded: the same draw every run
