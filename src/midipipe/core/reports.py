"""Metrics and curves as DVC wants them: flat JSON, CSV for `dvc plots`, PNG for people."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from midipipe.core.io import atomic_path, write_json

SKIPPED_FILE = "SKIPPED.json"  # in a model folder: the stage had nothing to learn, and why


def write_curves(
    history: list[dict],
    csv_path: str | Path,
    png_path: str | Path | None,
    title: str,
    keys: tuple[str, ...],
) -> None:
    """Per-epoch curves as CSV (for `dvc plots`) and PNG (for people)."""
    if not history:
        return
    columns = list(history[0])
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        if key in history[0]:
            ax.plot([h["epoch"] for h in history], [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_metrics(path: str | Path, metrics: dict) -> None:
    """Flat JSON of plain numbers and strings, as `dvc metrics diff` wants."""
    flat = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    write_json(path, flat)


@dataclass(frozen=True)
class Skip:
    """The outputs a stage declares in dvc.yaml, as it writes them when it has nothing to
    learn: the metrics say `status: skipped` and why, plots exist (a CSV header, a PNG with
    the reason) and each output folder holds SKIPPED.json, so DVC records the run and the
    stages that read the folder can say why they skip in turn."""

    metrics: str
    plots: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()

    def write(self, reason: str) -> None:
        for folder in self.dirs:
            write_json(Path(folder) / SKIPPED_FILE, {"status": "skipped", "reason": reason})
        for plot in self.plots:
            if plot.endswith(".png"):
                _text_png(plot, f"skipped: {reason}")
            else:
                with atomic_path(plot) as tmp:
                    tmp.write_text("status\nskipped\n")
        write_metrics(self.metrics, {"status": "skipped", "reason": reason})


def skipped_reason(folder: str | Path) -> str | None:
    """Why the stage that writes `folder` skipped, or None when it did not."""
    path = Path(folder) / SKIPPED_FILE
    return json.loads(path.read_text())["reason"] if path.is_file() else None


def _text_png(path: str | Path, text: str) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1.5))
    fig.text(0.02, 0.5, textwrap.fill(text, 90), va="center", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
