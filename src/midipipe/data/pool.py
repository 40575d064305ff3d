"""A process pool that survives bad inputs: exceptions, hangs and interpreter crashes.

Work goes out in small batches for throughput. When a batch times out or its worker dies
(a segfault in a parser), each of its items is retried alone, so only the culprit is
recorded as failed and every other item still lands. A worker that dies before pebble has
seen it take its task leaves the pool broken ("All workers expired", every task in flight
aborted): the pool is then replaced, the batches in flight are sent again, and the broken
batch is retried item by item like a crashed one. Results come back in input order, with at
most `window` batches in flight, so memory stays bounded on any corpus size.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from typing import Any

from pebble import ProcessExpired, ProcessPool

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """An item the worker could not process; `reason` is what rejects record."""

    reason: str


def default_workers(requested: int = 0) -> int:
    return requested if requested > 0 else (os.cpu_count() or 1)


def _run_batch(fn: Callable, items: list) -> list:
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:  # one bad item must not lose its batch-mates
            out.append(Failure(f"{type(exc).__name__}: {exc}"))
    return out


_LOST = (FutureTimeout, ProcessExpired, BrokenProcessPool)  # the task's worker, not fn, failed
_ATTEMPTS = 2  # an item alone in a pool that breaks twice is recorded as crashed


def _failure_of(exc: BaseException, timeout: float) -> Failure:
    if isinstance(exc, FutureTimeout):
        return Failure(f"timed out after {timeout:g} s")
    if isinstance(exc, ProcessExpired):
        return Failure(f"worker crashed (exit code {exc.exitcode})")
    if isinstance(exc, BrokenProcessPool):
        return Failure(f"worker crashed (the pool broke: {exc})")
    return Failure(f"{type(exc).__name__}: {exc}")


class RobustPool:
    """A long-lived pool for `map` calls over many inputs (a Ray actor keeps one for its life);
    `context` is a multiprocessing context name ("spawn" where forking is unsafe)."""

    def __init__(
        self,
        workers: int = 0,
        initializer: Callable | None = None,
        initargs: tuple = (),
        context: str | None = None,
    ):
        self.workers = default_workers(workers)
        ctx = multiprocessing.get_context(context) if context else multiprocessing
        self._start = lambda: ProcessPool(
            max_workers=self.workers, initializer=initializer, initargs=initargs, context=ctx
        )
        self.pool = self._start()

    def __enter__(self) -> RobustPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def _restart(self, error: BrokenProcessPool) -> None:
        log.warning("worker pool broke (%s); starting a new one", error)
        self.pool.stop()
        self.pool.join()
        self.pool = self._start()

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        timeout: float = 60.0,
        batch_size: int = 8,
        window: int | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield `(item, fn(item) or Failure)` in input order.

        `timeout` bounds one task; a batch that exceeds it is retried item by item, so only an
        item that alone takes longer is recorded as timed out.
        """
        window = window or 4 * self.workers
        it = iter(items)

        pending: deque[tuple[list, Future]] = deque()

        def submit(batch: list) -> Future:
            try:
                return self.pool.schedule(_run_batch, args=(fn, batch), timeout=timeout)
            except RuntimeError:  # pebble refuses work once a task of ours has broken it
                if self.pool.active:
                    raise
                heal(BrokenProcessPool("the pool broke"))
                return self.pool.schedule(_run_batch, args=(fn, batch), timeout=timeout)

        def heal(error: BrokenProcessPool) -> None:
            """Replace a broken pool (once) and send again what it aborted or never finished."""
            if self.pool.active:
                return  # already replaced when another of its tasks failed
            self._restart(error)
            for i, (batch, future) in enumerate(pending):
                if not future.done() or future.exception() is not None:
                    pending[i] = (batch, submit(batch))

        def alone(item: Any) -> Any:
            """One item in its own task (the culprit hunt), waited for at once."""
            for attempt in range(_ATTEMPTS):
                try:
                    return submit([item]).result()[0]
                except BrokenProcessPool as exc:
                    heal(exc)
                    if attempt == _ATTEMPTS - 1:
                        return _failure_of(exc, timeout)
                except (FutureTimeout, ProcessExpired) as exc:
                    return _failure_of(exc, timeout)

        while True:
            while len(pending) < window:
                batch = list(islice(it, batch_size))
                if not batch:
                    break
                pending.append((batch, submit(batch)))
            if not pending:
                return
            batch, future = pending.popleft()
            try:
                results = future.result()
            except _LOST as exc:
                broke = isinstance(exc, BrokenProcessPool)
                if broke:  # every task in flight was aborted, the culprit is unknown
                    heal(exc)
                if len(batch) == 1 and not broke:
                    results = [_failure_of(exc, timeout)]
                else:
                    log.warning("batch of %d failed (%s); retrying items alone", len(batch), exc)
                    results = [alone(item) for item in batch]
            yield from zip(batch, results, strict=True)


def robust_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int = 0,
    timeout: float = 60.0,
    batch_size: int = 8,
    initializer: Callable | None = None,
    initargs: tuple = (),
    window: int | None = None,
) -> Iterator[tuple[Any, Any]]:
    """`RobustPool.map` on a pool that lives as long as this iteration."""
    with RobustPool(workers, initializer, initargs) as pool:
        yield from pool.map(fn, items, timeout, batch_size, window)
