"""The typed `genre:` (stage 05) and `genre_hier:` (stage 06) sections of params.yaml."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from midipipe.core import params
from midipipe.core.errors import ParamError
from midipipe.genre.encoder import EncoderConfig

# manifest columns a phrase label can be; `auto` picks one the corpus has (genre/labels.py)
LABELS = ("auto", "composer", "genre", "emotion", "source", "period")
ARCHITECTURE = ("n_layer", "n_head", "d_model", "d_ff")

# The `genre:` keys each `profile:` sets (params.yaml leaves them null). cpu: ~0.15M
# parameters, 8 epochs (4 at 5e-4 stay near the majority class). gpu: DistilBERT's shape at
# half width (6 x 512, 8 heads, FF 2048), lr 5e-4 (train.lr x 0.5).
PROFILES: dict[str, dict] = {
    name: {
        "model": {k: getattr(cfg, k) for k in ARCHITECTURE},
        "train": {"epochs": epochs, "batch_size": batch, "lr_scale": scale},
    }
    for name, cfg, epochs, batch, scale in (
        ("cpu", EncoderConfig.cpu_default(), 8, 32, 1.0),
        ("gpu", EncoderConfig.gpu_profile(), 20, 64, 0.5),
    )
}


@dataclass
class GenreParams:
    """params.yaml `genre:` (stage 05, phrase classifier), null keys from `PROFILES`."""

    label: str = "auto"  # auto | composer | genre (first of `genres`) | emotion | source | period
    bars_per_phrase: int = 4
    max_len: int = 512  # tokens per phrase, [CLS] included; longer phrases are cut (counted)
    max_phrases_per_piece: int = 8  # training phrases per piece, spread (0 = all); eval: all
    min_class_pieces: int = 5  # a label with fewer train pieces is dropped (counted)
    transpose: int = 6  # random shift of Pitch tokens by up to this many semitones (0 = off)
    patience: int = 3  # epochs without a better valid macro-F1 before stopping (0 = never)
    # EncoderConfig keys (n_layer, ...); built directly (not from params.yaml), the cpu profile's
    model: dict[str, Any] = field(default_factory=lambda: dict(PROFILES["cpu"]["model"]))
    budget_s: float = 0.0  # training seconds; epochs stop once spent (0 = `train.epochs` only)
    eval_batch_size: int = 64
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.label in LABELS, "label", f"one of {', '.join(LABELS)}"),
            (self.bars_per_phrase >= 1, "bars_per_phrase", ">= 1"),
            (self.max_len >= 8, "max_len", ">= 8"),
            (self.max_phrases_per_piece >= 0, "max_phrases_per_piece", ">= 0 (0 = all)"),
            (self.min_class_pieces >= 1, "min_class_pieces", ">= 1"),
            (0 <= self.transpose <= 24, "transpose", "in [0, 24]"),
            (self.patience >= 0, "patience", ">= 0 (0 = never stop early)"),
            (self.eval_batch_size >= 1, "eval_batch_size", ">= 1"),
            (self.budget_s >= 0, "budget_s", ">= 0 (0 = no time budget)"),
        ]
        params.require(self, "genre", checks)
        names = {f.name for f in dataclasses.fields(EncoderConfig)}
        for key in self.model:
            if key not in names or key in ("vocab_size", "n_classes", "pad_id", "max_len"):
                raise ParamError(f"genre.model.{key}: not an EncoderConfig override")


@dataclass
class GenreHierParams:
    """params.yaml `genre_hier:` (stage 06, hierarchical multi-label)."""

    # a Hugging Face GPT-2 folder (with its own tokenizer: REMI-z chunks, `genre.remiz`);
    # null: the project's generator
    lm_path: str | None = None
    bars_per_chunk: int = 8
    max_chunks: int = 8  # per piece, spread over it (0 = all): bounds the LM embedding cost
    max_tokens: int = 0  # per chunk; longer ones are cut (counted). 0: the LM's context
    min_tag_pieces: int = 5  # a tag on fewer train pieces is dropped
    d_attn: int = 128
    dropout: float = 0.1
    patience: int = 5  # epochs without a lower valid loss before stopping (0 = never)
    embed_batch: int = 16  # chunks per LM forward pass
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:`

    def __post_init__(self) -> None:
        checks = [
            (self.bars_per_chunk >= 1, "bars_per_chunk", ">= 1"),
            (self.max_chunks >= 0, "max_chunks", ">= 0 (0 = all)"),
            (self.max_tokens >= 0, "max_tokens", ">= 0 (0 = the LM's context)"),
            (self.min_tag_pieces >= 1, "min_tag_pieces", ">= 1"),
            (self.d_attn >= 1, "d_attn", ">= 1"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            (self.patience >= 0, "patience", ">= 0"),
            (self.embed_batch >= 1, "embed_batch", ">= 1"),
        ]
        params.require(self, "genre_hier", checks)
