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


def _square(x: int) -> int:
    return x * x


def test_a_broken_pool_is_replaced_and_nothing_is_lost():
    """pebble breaks the whole pool ("All workers expired") when a worker dies before its
    task is seen to start; the batches then in flight must be sent again, not lost."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from midipipe.data.pool import RobustPool

    with RobustPool(workers=2) as pool:
        broken = pool.pool
        schedule = broken.schedule
        calls = []

        def breaking(fn, args, timeout):
            calls.append(args[1])
            if len(calls) == 2:  # the second batch: its future and the pool break
                future = Future()
                future.set_exception(BrokenProcessPool("All workers expired"))
                return future
            return schedule(fn, args=args, timeout=timeout)

        broken.schedule = breaking
        out = list(pool.map(_square, range(20), timeout=10, batch_size=3))
        assert pool.pool is not broken  # replaced
    assert out == [(x, x * x) for x in range(20)]
