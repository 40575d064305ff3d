"""Exact resume of `training.fit`: a run killed by SIGKILL mid-epoch, then resumed, ends with
the same weights, bit for bit, as one that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from midipipe.training import checkpoint

CHILD = Path(__file__).with_name("fit_child.py")


def child(resume: Path, out: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(resume), str(out), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_mid_epoch_checkpoint(resume: Path, proc: subprocess.Popen, limit_s: float = 60.0):
    """The first checkpoint that stops inside an epoch (not at its end)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and proc.poll() is None:
        unit = checkpoint.found(resume)
        if unit is not None:
            try:
                progress = json.loads((unit / checkpoint.META).read_text())["progress"]
            except (OSError, ValueError):  # renamed away while read
                progress = None
            if progress and progress["position"] > 0:
                return progress
        time.sleep(0.005)
    raise AssertionError(f"no mid-epoch checkpoint appeared:\n{proc.communicate()[0]}")


def test_killed_mid_epoch_resumes_to_identical_weights(tmp_path):
    straight = child(tmp_path / "r1", tmp_path / "straight.safetensors")
    killed = child(tmp_path / "r2", tmp_path / "resumed.safetensors", pause=0.02)
    progress = wait_for_mid_epoch_checkpoint(tmp_path / "r2", killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed.safetensors").exists()
    assert progress["step"] % 3 == 0

    resumed = child(tmp_path / "r2", tmp_path / "resumed.safetensors")
    log_resumed = resumed.communicate(timeout=120)[0]
    log_straight = straight.communicate(timeout=120)[0]
    assert resumed.returncode == 0, log_resumed
    assert straight.returncode == 0, log_straight
    assert "resuming at epoch" in log_resumed and "resuming" not in log_straight
    a = load_file(str(tmp_path / "straight.safetensors"))
    b = load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = [line for line in log_straight.splitlines() if line.startswith("history")]
    assert history and history == [
        line for line in log_resumed.splitlines() if line.startswith("history")
    ]
    assert not (tmp_path / "r2").exists()  # cleared on success


def test_a_kill_between_the_renames_keeps_the_previous_unit(tmp_path):
    """`ckpt.old` alone (the kill came after the old unit moved away) is still found."""
    w = {"w": torch.ones(2)}
    checkpoint.write(tmp_path, w, {"x": torch.zeros(1)}, {"step": 1})
    (tmp_path / checkpoint.CURRENT).rename(tmp_path / checkpoint.OLD)
    (tmp_path / checkpoint.TMP).mkdir()  # a half-written next unit is never read
    saved = checkpoint.read(tmp_path)
    assert saved is not None and saved.meta == {"step": 1}
    assert torch.equal(saved.state()["x"], torch.zeros(1))
    checkpoint.write(tmp_path, w, {"x": torch.ones(1)}, {"step": 2}, best=w)
    assert checkpoint.read(tmp_path).meta == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CURRENT]
