"""The pool must survive a raising, hanging or crashing item and keep input order."""

import os
import time

from midipipe.data.pool import Failure, robust_map


def _work(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    if x == 5:
        time.sleep(30)  # a hanging parser
    if x == 7:
        os._exit(139)  # an interpreter crash, as a segfault in C code would cause
    return x * x


def test_robust_map_isolates_raise_hang_and_crash():
    out = list(robust_map(_work, range(10), workers=2, timeout=1.5, batch_size=4))
    assert [item for item, _ in out] == list(range(10))
    results = dict(out)
    assert results[3] == Failure("ValueError: three is bad")
    assert isinstance(results[5], Failure) and "timed out" in results[5].reason
    assert isinstance(results[7], Failure) and "crashed" in results[7].reason
    for x in (0, 1, 2, 4, 6, 8, 9):
        assert results[x] == x * x


def test_robust_map_empty_input():
    assert list(robust_map(_work, [], workers=2)) == []


_PARENT = os.getpid()


def _unpickle_in_parent_fails():
    if os.getpid() == _PARENT:
        raise TypeError("cannot be rebuilt in the parent")
    return "rebuilt"


class _Poison:
    """A result pebble cannot unpickle in the parent: it breaks the whole pool for real."""

    def __reduce__(self):
        return (_unpickle_in_parent_fails, ())


def _breaks_pool(x: int):
    if x == 1:
        time.sleep(0.2)
        return _Poison()
    time.sleep(0.05 * (x % 3))
    return x * x


def test_a_broken_pool_is_replaced_and_nothing_else_is_lost():
    """When pebble breaks the whole pool (every task in flight aborted, new work refused), the
    pool is replaced, the other batches go out again, and only the culprit is a failure."""
    from midipipe.data.pool import RobustPool

    with RobustPool(workers=2, context="fork") as pool:
        first = pool.pool
        out = list(pool.map(_breaks_pool, range(12), timeout=10, batch_size=1, window=3))
        assert pool.pool is not first
    assert [item for item, _ in out] == list(range(12))
    results = dict(out)
    assert isinstance(results[1], Failure) and "pool broke" in results[1].reason
    for x in set(range(12)) - {1}:
        assert results[x] == x * x
