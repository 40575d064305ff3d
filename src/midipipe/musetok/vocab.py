"""MuseTok's event vocabulary, rebuilt in code so the project ships no copy of `dictionary.pkl`.

The official dictionary lists every event string once, sorted as plain strings, with ids 0..166
in that order. PAD is not in it: the reference uses `len(dictionary)` (167) as PAD and a model
vocabulary of 168.
"""

from __future__ import annotations

# Beat = onset within the bar in 40-tick steps. The official dictionary holds only the beats seen in
# its training corpora: every even beat below 50, every multiple of 3 up to 96 except 75, and a few
# more. Any other beat (e.g. Beat_50 of a long bar) is not encodable.
BEATS: tuple[int, ...] = tuple(
    sorted({*range(0, 50, 2), *range(0, 97, 3), 56, 64, 80, 88, 102} - {75})
)
# Sixteenth-based durations, then the triplet ones (ticks at 480 per quarter).
DURATIONS: tuple[int, ...] = (120, 240, 360, 480, 720, 960, 1440, 1920, 80, 160, 320, 640)
PITCHES: range = range(21, 109)
TIME_SIGNATURES: tuple[str, ...] = (
    "2/2", "2/4", "3/2", "3/4", "3/8", "4/2", "4/4", "6/4", "6/8", "9/4", "9/8", "12/8",
)  # fmt: skip


def _events() -> list[str]:
    events = ["Bar_None", "EOS_None"]
    events += [f"Beat_{b}" for b in BEATS]
    events += [f"Note_Duration_{d}" for d in DURATIONS]
    events += [f"Note_Pitch_{p}" for p in PITCHES]
    events += [f"Time_Signature_{ts}" for ts in TIME_SIGNATURES]
    return sorted(events)  # the official ids are the string-sorted order


ID_TO_EVENT: tuple[str, ...] = tuple(_events())
EVENT_TO_ID: dict[str, int] = {event: i for i, event in enumerate(ID_TO_EVENT)}
PAD_ID: int = len(ID_TO_EVENT)  # 167
VOCAB_SIZE: int = PAD_ID + 1  # 168
BAR_ID: int = EVENT_TO_ID["Bar_None"]  # 0
EOS_ID: int = EVENT_TO_ID["EOS_None"]  # 54


def event_to_id() -> dict[str, int]:
    """A fresh copy of the event -> id mapping (callers may mutate it)."""
    return dict(EVENT_TO_ID)
