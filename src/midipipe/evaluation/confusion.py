"""The phrase classifier's confusion matrices: CSV for `dvc plots` and a PNG of all panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from midipipe.core.io import atomic_path


def write_confusion(
    classes: Sequence[str],
    panels: list[tuple[str, np.ndarray, np.ndarray]],
    csv_path: str | Path,
    png_path: str | Path,
) -> None:
    """The first panel's (actual, predicted) pairs as CSV for `dvc plots` (confusion
    template), and every panel as a row-normalised matrix with counts in a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, y0, p0 = panels[0]
    with atomic_path(csv_path) as tmp:
        tmp.write_text(
            "actual,predicted\n"
            + "".join(f"{classes[a]},{classes[b]}\n" for a, b in zip(y0, p0, strict=True))
        )
    size = 1.5 + 0.5 * len(classes)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(size * len(panels) + 1, size + 0.8), squeeze=False
    )
    for ax, (title, y, pred) in zip(axes[0], panels, strict=True):
        m = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(m, (np.asarray(y, dtype=int), np.asarray(pred, dtype=int)), 1)
        ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
