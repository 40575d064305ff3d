"""Helpers for benchmarks: where the real data is, and peak memory of a process tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dst: Path) -> Path:
    """The repo's tracked (and unignored) files in `dst`, without data, metrics or dvc.lock:
    a project as a fresh clone has it, for runs that must not touch this checkout."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for rel in files + [".dvc/config", ".dvc/.gitignore"]:
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("data/", "metrics/", "dvc.lock")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def external_data() -> Path:
    """../shared/datasets, or what MIDIPIPE_EXTERNAL_DATA names."""
    return Path(os.environ.get("MIDIPIPE_EXTERNAL_DATA", ROOT.parent / "shared" / "datasets"))


class PeakRSS:
    """Sample the memory of this process and all its children; keep the peaks.

    `peak` sums each process's RSS, which counts a page that forked workers share with their
    parent once per process; `peak_pss` sums the proportional set size (a shared page split
    among its sharers), the tree's real footprint. `pss=False` skips the slower smaps read.
    With `pss`, the tree's PSS is also kept apart by depth: `peak_pss_by_depth[0]` this process
    (the benchmark itself), `[1]` its children (a tool such as `dvc repro`), `[2]` everything
    below them (the command the tool runs, and its workers)."""

    def __init__(self, interval: float = 0.05, pss: bool = False):
        self.interval = interval
        self.pss = pss
        self.peak = self.peak_pss = 0
        self.peak_pss_by_depth = [0, 0, 0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, list[int]]:
        """The tree's RSS and its PSS by depth (zeros without `pss`), now."""
        me = psutil.Process()
        rss, by_depth = 0, [0, 0, 0]
        direct = {c.pid for c in me.children()}
        for proc in [me, *me.children(recursive=True)]:
            try:
                if self.pss:
                    info = proc.memory_full_info()
                    depth = 0 if proc.pid == me.pid else 1 if proc.pid in direct else 2
                    by_depth[depth] += info.pss
                else:
                    info = proc.memory_info()
                rss += info.rss
            except psutil.Error:
                pass
        return rss, by_depth

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, by_depth = self._sample()
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, sum(by_depth))
            self.peak_pss_by_depth = [
                max(a, b) for a, b in zip(self.peak_pss_by_depth, by_depth, strict=True)
            ]
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._sample()[0]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample()[0])

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def peak_pss_mb(self) -> float:
        return round(self.peak_pss / 2**20, 1)

    @property
    def peak_pss_by_depth_mb(self) -> list[float]:
        return [round(x / 2**20, 1) for x in self.peak_pss_by_depth]
