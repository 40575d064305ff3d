"""data/spill.py: the on-disk set and the external sort give what the in-memory versions give."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from midipipe.data import spill

SCHEMA = pa.schema([("key", pa.string()), ("n", pa.int64())])


def _key(batch) -> np.ndarray:
    return np.array(batch["key"].to_pylist(), "S8")


def test_disk_set_says_which_keys_are_new(tmp_path):
    seen = spill.DiskSet(tmp_path / "s.sqlite")
    assert [seen.add(k) for k in ["a", "b", "a", "c", "b"]] == [True, True, False, True, False]
    seen.update(["c", "d", "d"])
    assert len(seen) == 4
    seen.close()


def test_sorted_batches_merges_many_runs_into_one_order(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"{k:08d}" for k in rng.permutation(5000)]
    table_in = pa.table({"key": keys, "n": range(5000)}, SCHEMA)
    batches = table_in.to_batches(max_chunksize=97)
    out = list(
        spill.sorted_batches(batches, _key, SCHEMA, tmp_path, run_rows=300, merge_rows=64, fan_in=4)
    )
    table = pa.Table.from_batches(out, SCHEMA)
    expected = table_in.sort_by("key")
    assert table.equals(expected)
    assert not list(tmp_path.glob("run-*"))  # runs removed once merged
    assert list(spill.sorted_batches([], _key, SCHEMA, tmp_path)) == []


def test_write_batches_matches_write_table_below_one_group(tmp_path):
    table = pa.table({"key": [f"{k:08d}" for k in range(300)], "n": range(300)}, SCHEMA)
    pq.write_table(table, tmp_path / "whole.parquet")
    spill.write_batches(tmp_path / "streamed.parquet", table.to_batches(37), SCHEMA, 1000)
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "streamed.parquet").read_bytes()
    spill.write_batches(tmp_path / "groups.parquet", table.to_batches(37), SCHEMA, 100)
    read = pq.ParquetFile(tmp_path / "groups.parquet")
    assert read.num_row_groups == 3 and read.read().equals(table)
    pq.write_table(SCHEMA.empty_table(), tmp_path / "empty_whole.parquet")
    spill.write_batches(tmp_path / "empty.parquet", [], SCHEMA)
    assert (tmp_path / "empty.parquet").read_bytes() == (
        tmp_path / "empty_whole.parquet"
    ).read_bytes()
