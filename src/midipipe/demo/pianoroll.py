"""A piano roll of a score as a matplotlib figure (Gradio shows it as an image): one colour
per track, time in seconds, so it lines up with the audio and the emotion curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import symusic  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

MAX_LEGEND = 8


def piano_roll(score: symusic.Score, title: str = "") -> Figure:
    """Notes as bars (pitch over seconds), drums in grey."""
    seconds = score.to("second")
    fig, ax = plt.subplots(figsize=(10, 3.4))
    lowest, highest, end = 127, 0, 1e-3
    for k, track in enumerate(t for t in seconds.tracks if len(t.notes)):
        notes = track.notes.numpy()
        start, dur, pitch = notes["time"], notes["duration"], notes["pitch"]
        end = max(end, float((start + dur).max()))
        if track.is_drum:
            color, label = "0.6", f"{track.name or 'drums'} (drums)"
        else:
            color, label = f"C{k % 10}", track.name or f"program {track.program}"
            lowest, highest = min(lowest, int(pitch.min())), max(highest, int(pitch.max()))
        ax.barh(
            pitch,
            np.maximum(dur, 0.02),
            left=start,
            height=0.8,
            color=color,
            edgecolor="none",
            label=label if k < MAX_LEGEND else None,
        )
    if highest >= lowest:
        ax.set_ylim(lowest - 2, highest + 2)
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right", ncol=2, framealpha=0.8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # Gradio draws it; pyplot must not keep every figure alive
    return fig
