"""Hierarchical multi-label genre model: a frozen pretrained LM embeds each chunk of bars, a
small learned head pools the chunks of a piece with attention and scores every tag.

The LM is either the project's generator (`models.gpt`, a folder with its `config.json` and
`model.safetensors`) or a Hugging Face GPT-2-format folder (`config.json` with `model_type`,
read offline with `transformers`, safetensors weights only). A Hugging Face folder with its own
tokenizer (the plan's `m2m_pt`) reads REMI-z chunks (`genre.remiz`), and its tokenizer must
cover REMI-z's tokens; any other LM reads chunks of the project's REMI ids, so it must have been
trained on that vocabulary. A chunk's embedding is the mean of the LM's last hidden states
over its tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from midipipe.core.device import inference_mode
from midipipe.core.io import atomic_path, write_json
from midipipe.genre import remiz
from midipipe.genre.phrases import vocab_sha

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass
class HierConfig:
    d_in: int = 192  # the LM's hidden size
    n_labels: int = 2
    d_attn: int = 128
    dropout: float = 0.1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown HierConfig keys {unknown}")
        return cls(**data)


class AttentionPool(nn.Module):
    """Weighted mean of a set: weight_i = softmax_i(v . tanh(W x_i)) over the unmasked items."""

    def __init__(self, d_in: int, d_attn: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_attn)
        self.score = nn.Linear(d_attn, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, N, D], mask [B, N] (True = a real chunk) -> pooled [B, D], weights [B, N]."""
        scores = self.score(torch.tanh(self.proj(x))).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an all-masked row -> zeros
        return torch.einsum("bn,bnd->bd", weights, x), weights


class HierClassifier(nn.Module):
    """Standardise, normalise, attention-pool and score a piece's chunk embeddings.

    The per-dimension standardisation is fitted on the train split's chunks (`fit_scaler`) and
    saved with the weights. An LM's mean-pooled states share one dominant direction (chunks of
    the trained cpu_default generator: mean pairwise cosine 0.999), which a per-vector
    LayerNorm keeps and which drowns what tells pieces apart; centring across chunks removes it.
    """

    def __init__(self, config: HierConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("center", torch.zeros(config.d_in))
        self.register_buffer("scale", torch.ones(config.d_in))
        self.norm = nn.LayerNorm(config.d_in)
        self.pool = AttentionPool(config.d_in, config.d_attn)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_in, config.n_labels)

    @torch.no_grad()
    def fit_scaler(self, chunks: Tensor) -> None:
        """Per-dimension mean and std of chunk embeddings [N, d_in] (the train split's)."""
        self.center.copy_(chunks.mean(0))
        if len(chunks) > 1:
            self.scale.copy_(chunks.std(0).clamp(min=1e-5))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Tag logits [B, n_labels] of chunk embeddings x [B, N, d_in] (mask: real chunks)."""
        pooled, _ = self.pool(self.norm((x - self.center) / self.scale), mask)
        return self.head(self.drop(pooled))


def save_hier(model: HierClassifier, folder: str | Path, meta: dict[str, Any]) -> None:
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp)
        )
    write_json(folder / CONFIG, {"model": dataclasses.asdict(model.config), **meta})


def load_hier(folder: str | Path) -> tuple[HierClassifier, dict[str, Any]]:
    folder = Path(folder)
    if not (folder / CONFIG).exists():
        raise FileNotFoundError(f"{folder / CONFIG} missing: not a genre_hier model folder")
    meta = json.loads((folder / CONFIG).read_text())
    if meta.get("status") == "skipped":
        raise FileNotFoundError(
            f"the hierarchical genre model in {folder} was not trained: {meta.get('reason')}"
        )
    model = HierClassifier(HierConfig.from_dict(meta.pop("model")))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval(), meta


# -- the frozen LM ---------------------------------------------------------------------------


def weights_sha256(folder: str | Path) -> str:
    """Of the LM's weight files, so a classifier notices when its LM was retrained."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))
    for path in files:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class FrozenLM:
    """A pretrained decoder in eval mode that maps chunks of token ids to vectors.

    `remiz` is the LM folder's own tokenizer when it has one (its chunks are then REMI-z,
    `genre.remiz`), else None (chunks of the project's REMI ids, `tokenizer`'s)."""

    def __init__(self, folder: str | Path, tokenizer, device: str | torch.device = "cpu"):
        self.folder = Path(folder)
        cfg_path = self.folder / CONFIG
        if not cfg_path.exists():
            raise FileNotFoundError(f"{cfg_path} missing: not an LM checkpoint folder")
        config = json.loads(cfg_path.read_text())
        self.device = torch.device(device)
        self.remiz = None
        if "model_type" in config:
            self.kind = "hf-" + config["model_type"]
            if remiz.has_tokenizer(self.folder):
                self.remiz = remiz.load_tokenizer(self.folder)
                self._load_hf(len(self.remiz), "its own tokenizer")
            else:
                self._load_hf(len(tokenizer.vocab), "the REMI tokenizer")
        else:
            from midipipe.generator.gpt import load_model

            self.kind = "generator"
            self.model = load_model(self.folder, tokenizer, self.device)  # checks the vocab
            self.d_model, self.context = self.model.config.d_model, self.model.config.context
            self._hidden: Tensor | None = None
            self.model.ln_f.register_forward_hook(lambda _m, _i, out: self._keep(out))
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def tokenizer_sha(self) -> str | None:
        """Fingerprint of the LM's own (REMI-z) tokenizer; a classifier stores it."""
        return None if self.remiz is None else vocab_sha(self.remiz)

    def _keep(self, out: Tensor) -> None:
        self._hidden = out

    def _load_hf(self, n_vocab: int, what: str) -> None:
        """The model's vocabulary must be the tokenizer's: same size (a model padded past its
        own tokenizer's ids is fine)."""
        import transformers

        try:
            model = transformers.AutoModel.from_pretrained(
                self.folder, local_files_only=True, use_safetensors=True
            )
        except OSError as exc:
            raise FileNotFoundError(
                f"{self.folder}: no loadable safetensors weights ({exc}); pickled weights "
                "(pytorch_model.bin) are never loaded: convert them to safetensors first"
            ) from exc
        size = int(model.config.vocab_size)
        if size != n_vocab and not (self.remiz is not None and size > n_vocab):
            raise ValueError(
                f"LM vocabulary {size} tokens, {what} {n_vocab}: the LM at {self.folder} was "
                "trained on another vocabulary, so it cannot read these token ids"
            )
        self.model = model.to(self.device).eval()
        self.d_model = int(model.config.hidden_size)
        self.context = int(getattr(model.config, "n_positions", 1024))

    def _hidden_states(self, ids: Tensor, keep: Tensor) -> Tensor:
        if self.kind == "generator":
            self.model(ids, 0)  # composer 0: the unconditional stream
            return self._hidden
        return self.model(input_ids=ids, attention_mask=keep.long()).last_hidden_state

    def embed(self, chunks: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """[len(chunks), d_model] float32: each chunk's mean last hidden state. Chunks longer
        than the LM's context are cut (callers cut and count them first). On CUDA the LM
        runs under bf16 autocast with TF32 (`core.device.inference_mode`)."""
        with inference_mode(self.device):
            return self._embed(chunks, batch_size)

    def _embed(self, chunks: list[np.ndarray], batch_size: int) -> np.ndarray:
        out = np.zeros((len(chunks), self.d_model), dtype=np.float32)
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))  # little padding
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            t = min(self.context, max(len(chunks[i]) for i in idx))
            ids = torch.zeros(len(idx), t, dtype=torch.long)
            keep = torch.zeros(len(idx), t, dtype=torch.bool)
            for row, i in enumerate(idx):
                c = chunks[i][:t]
                ids[row, : len(c)] = torch.as_tensor(c, dtype=torch.long)
                keep[row, : len(c)] = True
            ids, keep = ids.to(self.device), keep.to(self.device)
            h = self._hidden_states(ids, keep).float()  # causal: padding on the right is unseen
            mean = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
            out[idx] = mean.cpu().numpy()
        return out
