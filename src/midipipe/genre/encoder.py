"""A DistilBERT-like encoder that labels one [CLS]-prefixed REMI phrase.

Bidirectional self-attention over learned token and position embeddings, pre-norm blocks
(steadier than DistilBERT's post-norm on small corpora), and DistilBERT's head on the [CLS]
state: Linear -> ReLU -> dropout -> Linear. Unlike DistilBERT, attention weights get no dropout
by default: on CPU it costs about half the training speed (it disables the fused kernel).
PAD keys are masked, so a phrase gets the same logits whatever it is batched with. Weights keep
PyTorch's default initialisation, not BERT's N(0, 0.02): at this size and data, the small init
leaves the [CLS] state nearly independent of the phrase for many steps (a long loss plateau).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from midipipe.core.io import atomic_path, write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass
class EncoderConfig:
    vocab_size: int = 526  # len(tokenizer.vocab)
    n_classes: int = 2
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    max_len: int = 512  # [CLS] included
    dropout: float = 0.1  # embeddings, residual branches and head
    attn_dropout: float = 0.0  # on attention weights; > 0 forces CPU's slow attention path
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must split into n_head ({self.n_head})")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} outside the vocabulary")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")

    @classmethod
    def gpu_profile(cls, **overrides: Any) -> EncoderConfig:
        """DistilBERT's shape at half width: 6 layers, d_model 512, 8 heads, FF 2048."""
        return cls(**{"n_layer": 6, "n_head": 8, "d_model": 512, "d_ff": 2048, **overrides})

    @classmethod
    def cpu_default(cls, **overrides: Any) -> EncoderConfig:
        """About 0.15M parameters: minutes of training on 2 CPU cores."""
        return cls(**{"n_layer": 2, "n_head": 4, "d_model": 64, "d_ff": 256, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown EncoderConfig keys {unknown}")
        return cls(**data)


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.n_head, self.attn_dropout = cfg.n_head, cfg.attn_dropout
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
            for z in self.qkv(self.ln1(x)).split(d, dim=2)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.pre_classifier = nn.Linear(config.d_model, config.d_model)
        self.classifier = nn.Linear(config.d_model, config.n_classes)

    def features(self, ids: Tensor) -> Tensor:
        """The [CLS] (position 0) state, [B, d_model], of ids [B, T] padded with pad_id."""
        t = ids.shape[1]
        if t > self.config.max_len:
            raise ValueError(f"{t} tokens > max_len {self.config.max_len}")
        keep = (ids != self.config.pad_id)[:, None, None, :]  # [B, 1, 1, T]: keys to attend
        x = self.drop(self.tok(ids) + self.pos(torch.arange(t, device=ids.device)))
        for block in self.blocks:
            x = block(x, keep)
        return self.ln_f(x[:, 0])

    def forward(self, ids: Tensor) -> Tensor:
        """Class logits [B, n_classes]."""
        h = self.drop(F.relu(self.pre_classifier(self.features(ids))))
        return self.classifier(h)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_encoder(model: Encoder, folder: str | Path, meta: dict[str, Any]) -> None:
    """model.safetensors + config.json ({"model": EncoderConfig, **meta}), each atomic."""
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp)
        )
    write_json(folder / CONFIG, {"model": dataclasses.asdict(model.config), **meta})


def load_encoder(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[Encoder, dict[str, Any]]:
    """The encoder saved by `save_encoder` (eval mode) and the rest of its config.json."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} missing: not a phrase-classifier folder")
    meta = json.loads((folder / CONFIG).read_text())
    model = Encoder(EncoderConfig.from_dict(meta.pop("model")))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), meta
