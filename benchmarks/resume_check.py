"""Exact resume and multi-process training of `training.fit`, end to end, in subprocesses.

`kill_and_resume` trains a tiny model twice: once straight through, once killed by SIGKILL
right after a mid-epoch checkpoint and then resumed; the final weights must be identical.
`two_processes` trains it under `torchrun --nproc_per_node 2` (NCCL on CUDA, gloo on CPU)
and reports each rank's device. Used by tests/test_fit_resume.py and benchmarks/gpu_check.py;
as a script it is the child those start.

The child's batches draw on the loop's generator and NumPy's and Python's global RNGs, its
loss on the last two and its model on torch's (dropout), so a resume that restores any of
them wrongly ends elsewhere.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SCRIPT = Path(__file__).resolve()
EPOCHS, STEPS, ACCUM, CHECKPOINT_EVERY = 3, 8, 2, 3


def _batches(epoch: int, rng: torch.Generator):
    for _ in range(STEPS * ACCUM):
        x = torch.randn(4, 8, generator=rng) + float(np.random.rand()) + random.random()
        yield x, x.sum(1, keepdim=True)


def child(resume_dir: str, out: str, device: str, precision: str, pause: float) -> None:
    """Train the tiny model with `fit`; the main process writes the weights to `out`."""
    import logging

    from safetensors.torch import save_file

    from midipipe.core.params import TrainParams
    from midipipe.training import distributed as ddp
    from midipipe.training.fit import Fit, fit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def loss(net, batch):
        time.sleep(pause)
        dev = next(net.parameters()).device
        x, y = (t.to(dev) for t in batch)  # draws here are not replayed when a resume skips
        y = y * (1 + 0.1 * float(np.random.rand()) + 0.1 * random.random())
        value = nn.functional.mse_loss(net(x).float(), y)
        return value, {"mse": value.item()}

    def evaluate(m):
        x = torch.ones(2, 8, device=next(m.parameters()).device)
        return {"valid_loss": float(m(x).sum())}

    def save_best(m):
        save_file({k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}, out)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    job = Fit(model, _batches, STEPS, loss, evaluate, grad_accum=ACCUM)
    tp = TrainParams(
        epochs=EPOCHS,
        lr=1e-2,
        device=device,
        precision=precision,
        checkpoint_every=CHECKPOINT_EVERY,
    )
    fit(job, tp, resume_dir, save_best, {"check": 1})
    where = {"rank": ddp.rank(), "device": str(next(model.parameters()).device)}
    Path(f"{out}.rank{ddp.rank()}.json").write_text(json.dumps(where))  # read by two_processes
    if ddp.is_main():
        print("history", json.dumps([round(r["train_mse"], 6) for r in job.history]), flush=True)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _start(resume: Path, out: Path, device: str, precision: str, pause: float = 0.0):
    args = [str(resume), str(out), device, precision, str(pause)]
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _mid_epoch_checkpoint(resume: Path, proc: subprocess.Popen, limit_s: float) -> dict:
    """The progress of the first checkpoint that stops inside an epoch (not at its end)."""
    from midipipe.training import checkpoint

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and proc.poll() is None:
        unit = checkpoint.found(resume)
        if unit is not None:
            try:
                progress = json.loads((unit / checkpoint.META).read_text())["progress"]
            except (OSError, ValueError, KeyError):  # renamed away while read
                progress = None
            if progress and progress["position"] > 0:
                return progress
        time.sleep(0.005)
    raise RuntimeError(f"no mid-epoch checkpoint appeared:\n{proc.communicate()[0]}")


def _lines(log: str, tag: str) -> list:
    return [json.loads(line[len(tag) + 1 :]) for line in log.splitlines() if line.startswith(tag)]


def kill_and_resume(tmp: Path, device: str = "cpu", precision: str = "fp32") -> dict:
    """Straight run vs killed-and-resumed run: whether their final weights are identical."""
    from safetensors.torch import load_file

    tmp = Path(tmp)
    straight = _start(tmp / "r1", tmp / "straight.safetensors", device, precision)
    killed = _start(tmp / "r2", tmp / "resumed.safetensors", device, precision, pause=0.02)
    progress = _mid_epoch_checkpoint(tmp / "r2", killed, limit_s=120)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    resumed = _start(tmp / "r2", tmp / "resumed.safetensors", device, precision)
    log_resumed = resumed.communicate(timeout=300)[0]
    log_straight = straight.communicate(timeout=300)[0]
    for name, proc, log in (
        ("straight", straight, log_straight),
        ("resumed", resumed, log_resumed),
    ):
        if proc.returncode != 0:
            raise RuntimeError(f"the {name} run failed:\n{log}")
    a = load_file(str(tmp / "straight.safetensors"))
    b = load_file(str(tmp / "resumed.safetensors"))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {
        "killed_by": "SIGKILL" if killed.returncode == -signal.SIGKILL else killed.returncode,
        "killed_after_step": progress["step"],
        "killed_in_epoch": progress["epoch"] + 1,
        "resumed": "resuming at epoch" in log_resumed and "resuming" not in log_straight,
        "identical": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        "max_abs_diff": diff,
        "same_history": _lines(log_straight, "history") == _lines(log_resumed, "history"),
        "checkpoints_cleared": not (tmp / "r2").exists(),
        "device": device,
        "precision": precision,
    }


def two_processes(tmp: Path, device: str) -> dict:
    """The tiny run under torchrun with two processes: each rank's device, the outputs."""
    tmp = Path(tmp)
    out = tmp / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(SCRIPT), str(tmp / "ddp_resume"), str(out), device, "fp32", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{log[-4000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(tmp.glob(f"{out.name}.rank*.json"))]
    return {
        "backend": "nccl" if device.startswith("cuda") else "gloo",
        "ranks": {str(r["rank"]): r["device"] for r in ranks},
        "distinct_devices": len({r["device"] for r in ranks}) == len(ranks),
        "weights_written": out.exists(),
        "histories": len(_lines(log, "history")),  # the main process alone reports
    }


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
