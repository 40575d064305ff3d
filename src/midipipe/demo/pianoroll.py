"""A piano roll of a score as a matplotlib figure (Gradio shows it as an image): one colour
per track, time in seconds, so it lines up with the audio and the emotion curves. Notes are
drawn as one PolyCollection per track, not a bar each (POP909 060.mid, 1,234 notes, on the
same busy machine: 0.04-0.1 s against 3.9 s)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import symusic  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

MAX_LEGEND = 8


def note_boxes(start: np.ndarray, dur: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """(n, 4, 2) rectangle corners, 0.8 semitone high, at least 20 ms long."""
    end = start + np.maximum(dur, 0.02)
    low, high = pitch - 0.4, pitch + 0.4
    return np.stack(
        [np.stack(c, axis=1) for c in ((start, low), (end, low), (end, high), (start, high))],
        axis=1,
    )


def piano_roll(score: symusic.Score, title: str = "") -> Figure:
    """Notes as bars (pitch over seconds), drums in grey."""
    seconds = score.to("second")
    fig, ax = plt.subplots(figsize=(10, 3.4))
    lowest, highest, end, legend = 127, 0, 1e-3, []
    for k, track in enumerate(t for t in seconds.tracks if len(t.notes)):
        notes = track.notes.numpy()
        start, dur = notes["time"].astype(float), notes["duration"].astype(float)
        pitch = notes["pitch"].astype(float)
        end = max(end, float((start + dur).max()))
        if track.is_drum:
            color, label = "0.6", f"{track.name or 'drums'} (drums)"
        else:
            color, label = f"C{k % 10}", track.name or f"program {track.program}"
            lowest, highest = min(lowest, int(pitch.min())), max(highest, int(pitch.max()))
        ax.add_collection(
            PolyCollection(note_boxes(start, dur, pitch), facecolors=color, edgecolors="none")
        )
        if len(legend) < MAX_LEGEND:
            legend.append(Patch(color=color, label=label))
    ax.set_ylim(*((lowest - 2, highest + 2) if highest >= lowest else (0, 127)))
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(alpha=0.25)
    if legend:
        ax.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # Gradio draws it; pyplot must not keep every figure alive
    return fig
