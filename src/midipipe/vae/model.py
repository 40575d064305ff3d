"""A label-conditioned transformer VAE over REMI windows, with a mixture-of-Gaussians prior.

The encoder (bidirectional, RoPE) reads a window of REMI tokens and gives the posterior
q(z | x) = N(mu, diag sigma^2) from its mean-pooled output. The prior is a mixture with one
learned Gaussian per label (composer id: 0 = no known composer, 1..K frequent, K+1 OTHER);
a window's KL is taken to its own label's component, so each composer owns a region of the
latent space, and sampling a composer means drawing z from its component.

The decoder is causal and reads the label twice: as the first token of its self-attention
(standing in for BOS) and, with z, in the memory its cross-attention reads (z as
`n_memory` vectors plus the label's embedding); with `label_add`, its embedding is also added
to every decoder position, so no layer has to fetch it by attention. `layer_norm: false`
drops every LayerNorm, one of the ablations the users' plan found decisive. Label 0 (no known
composer) doubles as the unconditional label of classifier-free guidance: training drops
the decoder's label to 0 now and then (`vae.label_dropout`), and sampling mixes the two.

Attention, the MLP and rotary embeddings are the GPT's (`models.gpt`), and so is the
decoder's KV cache (`KVCache`), so sampling costs one token's forward per step. Embeddings
start at std d_model**-0.5, a near-uniform first guess through the tied head (the GPT starts
its at d_model**-0.25 for a wider logit range; the VAE's ablations were run at -0.5).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from midipipe.generator.gpt import (
    CONFIG,
    MLP,
    WEIGHTS,
    Attention,
    Block,
    KVCache,
    check_heads,
    rope_angles,
)

KIND = "label_vae"  # config.json's `kind`: tells a VAE folder from a GPT one


@dataclass
class VAEConfig:
    vocab_size: int = 526
    pad_id: int = 0
    n_labels: int = 2  # composer ids, 0 (no known composer) and OTHER included
    window: int = 256  # the longest token window the model encodes or decodes
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 256
    n_enc_layer: int = 2
    n_dec_layer: int = 2
    d_latent: int = 32
    n_memory: int = 4  # cross-attention memory vectors made from z
    dropout: float = 0.1
    layer_norm: bool = True
    label_add: bool = False  # the label's embedding also added to every decoder position
    prior_spread: float = 1.0  # std of the initial component means: labels start apart
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.n_head)
        checks = [
            (0 <= self.pad_id < self.vocab_size, "pad_id", f"in 0..{self.vocab_size - 1}"),
            (self.n_labels >= 1, "n_labels", ">= 1"),
            (self.window >= 2, "window", ">= 2"),
            (self.d_latent >= 1, "d_latent", ">= 1"),
            (self.n_memory >= 1, "n_memory", ">= 1"),
            (self.n_enc_layer >= 1 and self.n_dec_layer >= 1, "n_enc_layer/n_dec_layer", ">= 1"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ValueError(f"VAEConfig.{key} must be {want}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        data = dict(data)
        kind = data.pop("kind", None)
        if kind != KIND:
            raise ValueError(f"not a label-conditioned VAE config (kind {kind!r}, want {KIND!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown VAEConfig keys {unknown} (known: {', '.join(sorted(names))})"
            )
        return cls(**data)


def norm(cfg: VAEConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model, bias=False) if cfg.layer_norm else nn.Identity()


def encoder_block(cfg: VAEConfig) -> Block:
    """The GPT's pre-norm block (run without a causal mask), its norms dropped if asked."""
    block = Block(cfg)
    if not cfg.layer_norm:
        block.ln1, block.ln2 = nn.Identity(), nn.Identity()
    return block


class DecoderBlock(nn.Module):
    """Causal RoPE self-attention, cross-attention to the (z, label) memory, MLP; pre-norm."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = norm(cfg), norm(cfg), norm(cfg)
        self.attn = Attention(cfg)
        self.cross = nn.MultiheadAttention(
            cfg.d_model, cfg.n_head, dropout=cfg.dropout, bias=False, batch_first=True
        )
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        cos: Tensor,
        sin: Tensor,
        causal: bool,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), cos, sin, None, causal, cache, layer))
        h = self.ln2(x)
        x = x + self.drop(self.cross(h, memory, memory, need_weights=False)[0])
        return x + self.drop(self.mlp(self.ln3(x)))


class LabelVAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.d_model)  # shared by encoder, decoder and head
        self.label = nn.Embedding(c.n_labels, c.d_model)
        self.encoder = nn.ModuleList(encoder_block(c) for _ in range(c.n_enc_layer))
        self.enc_norm = norm(c)
        self.to_posterior = nn.Linear(c.d_model, 2 * c.d_latent)
        self.prior_mean = nn.Parameter(torch.randn(c.n_labels, c.d_latent) * c.prior_spread)
        self.prior_logvar = nn.Parameter(torch.zeros(c.n_labels, c.d_latent))
        self.to_memory = nn.Linear(c.d_latent, c.n_memory * c.d_model)
        self.decoder = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_dec_layer))
        self.dec_norm = norm(c)
        self.drop = nn.Dropout(c.dropout)
        for name, p in self.named_parameters():
            if name.startswith(("prior_", "to_posterior.bias")) or p.dim() < 2:
                continue
            embedding = name.startswith(("tok.", "label."))
            nn.init.normal_(p, std=c.d_model**-0.5 if embedding else 0.02)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _rope(self, start: int, t: int, device: torch.device) -> tuple[Tensor, Tensor]:
        positions = torch.arange(start, start + t, device=device)
        return rope_angles(
            positions, self.config.d_model // self.config.n_head, self.config.rope_base
        )

    def check_length(self, t: int) -> None:
        if t > self.config.window:
            raise ValueError(
                f"window of {t} tokens is longer than the model's {self.config.window} "
                "(the vae.window it was trained with)"
            )

    # -- encoder and prior ----------------------------------------------------------------

    def posterior(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [B, d_latent] of windows ids [B, T] (PAD positions are ignored)."""
        b, t = ids.shape
        self.check_length(t)
        keep = ids != self.config.pad_id
        cos, sin = self._rope(0, t, ids.device)
        mask = keep[:, None, None, :]  # keys a query may attend to
        x = self.drop(self.tok(ids))
        for block in self.encoder:
            x = block(x, cos, sin, mask, False)
        x = self.enc_norm(x)
        w = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp(min=1)
        mu, logvar = self.to_posterior(pooled).float().chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def kl_per_dim(self, mu: Tensor, logvar: Tensor, labels: Tensor) -> Tensor:
        """KL(q(z|x) || the label's component) per latent dimension, [B, d_latent]."""
        pm, plv = self.prior_mean[labels], self.prior_logvar[labels].clamp(-10, 10)
        return 0.5 * (plv - logvar + (logvar.exp() + (mu - pm) ** 2) / plv.exp() - 1)

    def sample_prior(
        self, labels: Tensor, gen: torch.Generator | None = None, scale: float = 1.0
    ) -> Tensor:
        """z drawn from each label's component with its std times `scale` (0: the
        component's mean), [B, d_latent]."""
        eps = torch.randn(len(labels), self.config.d_latent, generator=gen).to(labels.device)
        std = (0.5 * self.prior_logvar[labels].clamp(-10, 10)).exp()
        return self.prior_mean[labels] + scale * std * eps

    # -- decoder --------------------------------------------------------------------------

    def memory(self, z: Tensor, labels: Tensor) -> Tensor:
        """What the cross-attention reads: z as `n_memory` vectors, then the label."""
        c = self.config
        zs = self.to_memory(z.to(self.tok.weight.dtype)).view(len(z), c.n_memory, c.d_model)
        return torch.cat([zs, self.label(labels)[:, None]], dim=1)

    def decode(
        self,
        ids: Tensor,
        memory: Tensor,
        labels: Tensor,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Next-token logits [B, T', vocab]. Without a cache, ids [B, T] are the window and
        the label token is put in front (T' = T, logits[:, i] predict ids[:, i]); with one,
        ids continue what it holds (an empty cache starts with the label token)."""
        b, t = ids.shape
        x = self.tok(ids)
        if self.config.label_add:
            x = x + self.label(labels)[:, None]
        start = cache.pos if cache is not None else 0
        if start == 0:
            x = torch.cat([self.label(labels)[:, None], x], dim=1)
            if cache is None:
                x = x[:, :-1]  # the label predicts ids[0]; ids[-1] predicts nothing in the window
        n = x.shape[1]
        self.check_length(start + n)
        cos, sin = self._rope(start, n, ids.device)
        if cache is not None:
            cache.begin(n)
        x = self.drop(x)
        causal = cache is None or start == 0
        for i, block in enumerate(self.decoder):
            x = block(x, memory, cos, sin, causal and n > 1, cache, i)
        if cache is not None:
            cache.advance(n)
        return F.linear(self.dec_norm(x), self.tok.weight) * self.config.d_model**-0.5

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_dec_layer, self.config.window)

    def forward(
        self, ids: Tensor, labels: Tensor, sample: bool = True, dec_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [B, T, vocab], mu, logvar) for windows ids [B, T] of labels [B]; z is drawn
        from the posterior (reparameterised) or, with `sample=False`, its mean. The decoder
        reads `dec_labels` when given (labels dropped for guidance), else `labels`."""
        mu, logvar = self.posterior(ids)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu
        dec = labels if dec_labels is None else dec_labels
        return self.decode(ids, self.memory(z, dec), dec), mu, logvar


# -- checkpoints -----------------------------------------------------------------------------


def load_vae(folder: str | Path, device: str | torch.device = "cpu") -> LabelVAE:
    """The model `gpt.save_model` wrote (it saves any module with a `config.to_dict()`), in
    eval mode; a folder of another model is refused."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} missing: not a VAE checkpoint folder")
    try:
        config = VAEConfig.from_dict(json.loads((folder / CONFIG).read_text()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{folder}: {exc}") from None
    model = LabelVAE(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval()
