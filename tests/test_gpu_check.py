"""benchmarks/gpu_check.py keeps working: its tiny CPU run prints one JSON line with every
section's figures (resume and ddp have their own tests: tests/test_fit_resume.py and the
torchrun test in tests/test_generator_stages.py)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_cpu_run_prints_every_section(monkeypatch, capsys):
    """The script as `python benchmarks/gpu_check.py` runs it, in this process: a fresh
    interpreter would spend most of the time importing torch again."""
    threads = torch.get_num_threads()  # --cpu sets one thread for the process
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--cpu", "--skip", "resume,ddp"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on it
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    out = json.loads(lines[0])
    assert out["mode"] == "cpu" and out["resume"]["skipped"] == "--skip"
    for section in ("train", "sampling", "musetok", "phrase"):
        assert "error" not in out[section], (section, out[section])
    assert out["train"]["it_s"] > 0 and out["train"]["final_loss"] > 0
    assert out["sampling"]["one_guided_tok_s"] > 0 and out["sampling"]["batch_guided_tok_s"] > 0
    musetok = out["musetok"]
    assert musetok["bf16_packed_bars_s"] > 0 and musetok["fp32_one_per_row_bars_s"] > 0
    assert 0 <= musetok["code_agreement_all_levels"] <= musetok["code_agreement_l0"] <= 1
    assert out["phrase"]["fp32_phrases_s"] > 0
