"""Splits are deterministic, grouped and stable; composer buckets follow the issue's rules."""

from collections import Counter

import pytest

from midipipe.data import composers, splits


def test_splits_grouped_deterministic_and_stable():
    songs = [f"song{i}" for i in range(2000)]
    first = {s: splits.assign(s, 1234, 0.1, 0.1) for s in songs}
    # adding files never moves an existing song
    more = songs + [f"new{i}" for i in range(500)]
    second = {s: splits.assign(s, 1234, 0.1, 0.1) for s in more}
    assert all(second[s] == first[s] for s in songs)
    counts = Counter(first.values())
    assert 150 < counts["test"] < 250 and 150 < counts["valid"] < 250
    # a different seed draws different splits
    assert sum(splits.assign(s, 99, 0.1, 0.1) != first[s] for s in songs) > 200


def test_splits_stratified_in_expectation_per_label():
    # two labels of very different sizes both get about 10% test songs
    for label, n in (("bach", 3000), ("joplin", 600)):
        got = Counter(splits.assign(f"{label}:{i}", 7, 0.1, 0.1) for i in range(n))
        assert abs(got["test"] / n - 0.1) < 0.035


def test_bad_fractions_are_rejected_by_name():
    with pytest.raises(ValueError, match="organize.valid_frac"):
        splits.check_fractions(0.6, 0.5)


def test_bucket_ids_by_descending_count_other_and_unconditional():
    names = ["bach"] * 12 + ["mozart"] * 10 + ["haydn"] * 9 + ["ives"] * 1 + [None] * 3
    table = composers.bucket(names, min_pieces=10)
    assert [(c["name"], c["id"], c["count"]) for c in table["composers"]] == [
        ("bach", 1, 12),
        ("mozart", 2, 10),
    ]
    assert table["other_id"] == 3 and table["other"]["count"] == 10
    assert table["unknown_pieces"] == 3
    assert composers.id_of(table, "bach") == 1
    assert composers.id_of(table, "haydn") == 3
    assert composers.id_of(table, None) == composers.UNCONDITIONAL == 0


def test_bucket_ties_broken_by_name_and_min_pieces_checked():
    table = composers.bucket(["b"] * 2 + ["a"] * 2, min_pieces=2)
    assert [c["name"] for c in table["composers"]] == ["a", "b"]
    with pytest.raises(ValueError, match="composers.min_pieces"):
        composers.bucket([], 0)
