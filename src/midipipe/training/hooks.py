"""Hooks wrapped around a `training.Fit` job: early stopping on a valid metric, and timing of
evaluation, so training throughput counts training only.

`fit` has no early stopping, so `EarlyStop` wraps a job's batches and evaluation: once the
best key has not improved for `patience` epochs (or the time budget is spent), the remaining
epochs are empty (no batches,
last metrics again) and their rows are dropped from the history.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from midipipe.training.fit import Fit

log = logging.getLogger(__name__)


class EarlyStop:
    """Stops `job` once its best key has not improved for `patience` epochs, or once its
    training time reaches `budget_s` (0: no budget), see module doc.

    Its state is the job's history, which `fit` restores on resume, so a resumed run stops
    where an uninterrupted one would.
    """

    def __init__(self, job: Fit, patience: int, budget_s: float = 0.0) -> None:
        self.job, self.patience, self.budget_s = job, patience, budget_s
        self._batches, self._evaluate = job.train_batches, job.evaluate
        job.train_batches, job.evaluate = self.batches, self.evaluate

    def rows(self) -> list[dict]:
        return [h for h in self.job.history if not h.get("early_stopped")]

    def stopped(self) -> bool:
        rows = self.rows()
        if self.budget_s and rows and train_seconds(rows) >= self.budget_s:
            return True
        if not self.patience or not rows:
            return False
        values = np.array([h[self.job.best_key] for h in rows])
        best = int(values.argmax() if self.job.best_mode == "max" else values.argmin())
        return len(rows) - 1 - best >= self.patience

    def batches(self, epoch: int, rng: torch.Generator):
        return iter(()) if self.stopped() else self._batches(epoch, rng)

    def evaluate(self, model) -> dict[str, float]:
        if self.stopped():
            last = self.rows()[-1]
            return {k: last[k] for k in last if k.startswith("valid")} | {"early_stopped": 1.0}
        return {**self._evaluate(model), "early_stopped": 0.0}

    def finish(self) -> list[dict]:
        """The history without the empty epochs; logs where training stopped."""
        self.job.history = self.rows()
        if len(self.job.history) and self.stopped():
            log.info("stopped early after epoch %d", self.job.history[-1]["epoch"])
        return self.job.history


def timed(evaluate: Callable) -> Callable:
    """`evaluate` that also reports its own seconds as `valid_s`."""

    def run(model) -> dict[str, float]:
        t0 = time.perf_counter()
        return {**evaluate(model), "valid_s": round(time.perf_counter() - t0, 3)}

    return run


def train_seconds(history: list[dict]) -> float:
    """Seconds spent training: the epochs' time less their `valid_s`."""
    return sum(h["epoch_s"] - h.get("valid_s", 0.0) for h in history)


def epochs_for_budget(job: Fit, budget_s: float, max_epochs: int, probe_steps: int = 6) -> int:
    """Epochs that fit `budget_s` of training (1 to `max_epochs`), timed on a copy of the model
    over a few of its training steps, so the learning-rate schedule spans the run the budget
    allows instead of being cut short by it."""
    model = copy.deepcopy(job.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    times = []
    batches = job.train_batches(0, torch.Generator().manual_seed(0))
    for _, batch in zip(range(probe_steps), batches, strict=False):
        t0 = time.perf_counter()
        value, _ = job.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:] or times)) if times else 0.0
    if step_s <= 0:
        return max_epochs
    epochs = int(budget_s / (step_s * max(1, job.steps_per_epoch)))
    log.info("time budget %.0f s at %.3f s/step: %d epochs", budget_s, step_s, epochs)
    return min(max_epochs, max(1, epochs))
