"""Exact resume of `training.fit`: a run killed by SIGKILL mid-epoch, then resumed, ends with
the same weights, bit for bit, as one that was never interrupted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from midipipe.training import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from resume_check import kill_and_resume  # noqa: E402


def test_killed_mid_epoch_resumes_to_identical_weights(tmp_path):
    r = kill_and_resume(tmp_path)
    assert r["killed_by"] == "SIGKILL" and r["killed_after_step"] % 3 == 0
    assert r["resumed"] and r["same_history"] and r["checkpoints_cleared"]
    assert r["identical"], r


def test_a_kill_between_the_renames_keeps_the_previous_unit(tmp_path):
    """`ckpt.old` alone (the kill came after the old unit moved away) is still found."""
    w = {"w": torch.ones(2)}
    checkpoint.write(tmp_path, w, {"x": torch.zeros(1)}, {"step": np.int64(1)})
    (tmp_path / checkpoint.CURRENT).rename(tmp_path / checkpoint.OLD)
    (tmp_path / checkpoint.TMP).mkdir()  # a half-written next unit is never read
    saved = checkpoint.read(tmp_path)
    assert saved is not None and saved.meta == {"step": 1}
    assert torch.equal(saved.state()["x"], torch.zeros(1))
    checkpoint.write(tmp_path, w, {"x": torch.ones(1)}, {"step": 2}, best=w)
    assert checkpoint.read(tmp_path).meta == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CURRENT]
