"""A tiny training run for the resume tests: `python fit_child.py RESUME_DIR OUT [SLEEP_S]`.

Its batches draw on the loop's generator and NumPy's and Python's global RNGs, its loss on
the last two and its model on torch's (dropout), so a resume that restores any of them
wrongly ends elsewhere. It writes the final weights to OUT and logs where it resumed.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from midipipe.core.params import TrainParams
from midipipe.training.fit import Fit, fit

EPOCHS, STEPS, ACCUM = 3, 8, 2


def batches(epoch: int, rng: torch.Generator):
    for _ in range(STEPS * ACCUM):
        x = torch.randn(4, 8, generator=rng) + float(np.random.rand()) + random.random()
        yield x, x.sum(1, keepdim=True)


def main() -> None:
    resume_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def loss(net, batch):
        time.sleep(pause)
        x, y = batch  # draws here are not replayed when a resume skips batches
        y = y * (1 + 0.1 * float(np.random.rand()) + 0.1 * random.random())
        value = nn.functional.mse_loss(net(x), y)
        return value, {"mse": value.item()}

    def evaluate(m):
        x = torch.ones(2, 8)
        return {"valid_loss": float(m(x).sum())}

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    job = Fit(model, batches, STEPS, loss, evaluate, grad_accum=ACCUM)
    tp = TrainParams(epochs=EPOCHS, lr=1e-2, device="cpu", precision="fp32", checkpoint_every=3)

    def save_best(m):
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out))

    fit(job, tp, resume_dir, save_best, {"test": 1})
    print("history", [round(r["train_mse"], 6) for r in job.history], flush=True)


if __name__ == "__main__":
    main()
