"""midipipe: MIDI corpora to tokens, per-bar latents and trained symbolic-music models."""

__version__ = "0.1.0"
