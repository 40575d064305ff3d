"""Metrics and curves as DVC wants them: flat JSON, CSV for `dvc plots`, PNG for people."""

from __future__ import annotations

import csv
from pathlib import Path

from midipipe.core.io import atomic_path, write_json


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
