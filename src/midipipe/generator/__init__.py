"""The composer-conditioned generator: training (stage 08, `train`), sampling per composer
and scoring (stage 09, `generate`), and the `midipipe generate` command (`cli`, `command`).

A trained generator folder is self-contained: `model.safetensors` + `config.json` (the GPT),
`composers.json` (names -> conditioning ids, as trained), `tokenizer.json` (the REMI
vocabulary the ids mean), `training.json` (what sampling must repeat: `key`, whether the
pieces were key-normalised, so primers are too, and `note_order`) and `intervals.json` (the
training chords' counts behind `generate.chord_prior`), so it can be copied elsewhere and
still sample. This module is imported by the command line, so it holds names only, nothing
that loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPOSERS_FILE = "composers.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINING_FILE = "training.json"


@dataclass
class GenerateOptions:
    """Arguments of `midipipe generate`."""

    composer: str
    out: str = "generated.mid"
    guidance: float = 3.0
    temperature: float = 0.9
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.02
    seed_length: int = 128
    max_tokens: int = 1024
    max_bars: int = 0
    seed: int = 0
    chord_prior: float = 1.0  # as `generate.chord_prior`: the training chords' prior
    model_dir: str = "models/generator"
    tokenizer: str | None = None  # default: the model folder's, else data/tokens/remi's
    primer: str | None = None
    data_dir: str = "data"
    device: str = "auto"
    interactive: bool = False
    progress: bool = True
