"""A composer-conditioned decoder-only transformer over REMI tokens.

Pre-norm blocks with rotary position embeddings, `F.scaled_dot_product_attention`, and a
token embedding tied to the output head, logits scaled by d_model**-0.5. Since the final
norm makes a vector's length about sqrt(d_model), a token's logit can be at most about its
embedding's norm: embeddings start at std d_model**-0.25 (norm d_model**0.25, 3.4 at
d_model 128), so the model can be confident from the first steps, while a token's logit for
itself starts at only d_model**0.25 and the first loss is still about ln(vocab). At std
d_model**-0.5 (norm 1) the model spent its whole CPU budget growing them: after 360 steps it
gave BOS -> Bar 0.48 where the data says 1, its valid loss was 1.67 instead of 1.53, and
its music sat nearer chance for the composer classifier (README). At std 1 it would start by
predicting its input token with logit sqrt(d_model) (loss ~12). A learned composer embedding,
times `composer_scale`, is added to every token embedding; id 0 is the unconditional row that
composer dropout trains, which is what classifier-free guidance contrasts against. With
`condition: every_layer` the composer also scales and shifts the output of each block's two
layer norms (FiLM, a learned per-composer row, zero at init so training starts as `input`):
added at the input only, the id is one vector among the tokens' and fades with depth. With
`composer_token` a sequence that starts at position 0 (a training window, or the first
forward of sampling) is also preceded by one position whose input is a second learned
composer embedding, so attention can read the composer as it reads a token; the attention
window is then `context + 1`, so every token of a training window sees it (past that,
sampling's sliding window lets it go and the added embedding remains).

Each token attends to at most `context` tokens (itself included). Training windows are
`context` long, so this only matters when generating past the context: the KV cache then
keeps a sliding window of keys, which is exact for rotary embeddings because they only see
relative offsets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from midipipe.core.io import atomic_path, write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CONDITIONS = ("input", "every_layer")


def check_heads(d_model: int, n_head: int) -> None:
    """Rotary embeddings rotate pairs, so each head needs an even width."""
    if d_model % n_head or (d_model // n_head) % 2:
        raise ValueError(
            f"d_model ({d_model}) must split into n_head ({n_head}) "
            "heads of even size (rotary embeddings rotate pairs)"
        )


@dataclass
class GPTConfig:
    vocab_size: int = 526  # len(tokenizer.vocab); stages pass the real one
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 192
    d_ff: int = 768
    context: int = 512  # the most tokens one token attends to (training window length)
    n_composers: int = 2  # composer ids, 0 (unconditional) and OTHER included
    composer_scale: float = 0.25
    composer_token: bool = False  # also a composer position before the first token
    condition: str = "input"  # input | every_layer: also a per-layer FiLM of the layer norms
    dropout: float = 0.1
    grad_checkpointing: bool = False
    pad_id: int = 0
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.n_head)
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"pad_id {self.pad_id} outside the vocabulary (0..{self.vocab_size - 1})"
            )
        if self.n_composers < 1:
            raise ValueError(
                f"n_composers must be >= 1 (id 0 is unconditional), got {self.n_composers}"
            )
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")
        if self.condition not in CONDITIONS:
            raise ValueError(
                f"condition must be one of {', '.join(CONDITIONS)}, got {self.condition!r}"
            )

    @classmethod
    def gpu_profile(cls, **overrides: Any) -> GPTConfig:
        """8 layers x 8 heads, d_model 512, FF 2048, 8192-token context (one GPU)."""
        return cls(
            **{
                "n_layer": 8,
                "n_head": 8,
                "d_model": 512,
                "d_ff": 2048,
                "context": 8192,
                **overrides,
            }
        )

    @classmethod
    def cpu_default(cls, **overrides: Any) -> GPTConfig:
        """About 2M parameters and a 512-token context: trains in minutes on 2 CPU cores."""
        return cls(
            **{"n_layer": 4, "n_head": 4, "d_model": 192, "d_ff": 768, "context": 512, **overrides}
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown GPTConfig keys {unknown} (known: {', '.join(sorted(names))})"
            )
        return cls(**data)


# -- rotary position embeddings -------------------------------------------------------------


def rope_angles(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin of position x frequency, [T, head_dim / 2], for absolute `positions`."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x [..., head_dim] by their angles (cos,
    sin [..., head_dim / 2], broadcast against x)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


# -- KV cache --------------------------------------------------------------------------------


class KVCache:
    """Keys (after rotation) and values per layer for incremental decoding.

    One preallocated buffer per layer, keys and values together ([2, B, heads, capacity,
    head_dim]); when one is full its last `context - 1` entries move to a new one, so
    appending a token copies no past keys most of the time. `GPT.decode_step` keeps its own
    copy of the window instead, a `DecodeRing`, made from these buffers on its first step
    (and written back if the module forward continues after it). `weights` holds the
    model's weights as `decode_step` wants them, made on its first step: the weights that
    fill a cache are the ones that read it.
    """

    def __init__(self, n_layer: int, context: int) -> None:
        self.context = context
        self.kv: list[Tensor | None] = [None] * n_layer
        self.start = 0  # first live entry in the buffers
        self.length = 0  # live entries from `start`
        self.pos = 0  # absolute position of the next token
        self._lo = self._keep = 0
        self.weights: DecodeWeights | None = None
        self.ring: DecodeRing | None = None  # holds the window while decode_step runs

    def n_past(self) -> int:
        """Past keys the next tokens may attend to."""
        return min(self.pos if self.ring is not None else self.length, self.context - 1)

    def begin(self, t: int) -> None:
        """Before a forward of `t` tokens: drop keys out of the window, make room for `t`."""
        if self.ring is not None:  # decode_step ran last: its window, in order
            self.kv, self.start, self.length = self.ring.unwind(self.pos), 0, self.n_past()
            self.ring = None
        keep = self.n_past()
        lo = self.start + self.length - keep
        if self.kv[0] is not None and lo + keep + t > self.kv[0].shape[3]:
            for i, buf in enumerate(self.kv):
                new = buf.new_empty(*buf.shape[:3], max(2 * self.context, keep + t), buf.shape[4])
                new[:, :, :, :keep] = buf[:, :, :, lo : lo + keep]
                self.kv[i] = new
            lo = 0
        self._lo, self._keep = lo, keep

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append one layer's new keys/values; return the past window plus the new ones."""
        lo, end = self._lo, self._lo + self._keep + k.shape[2]
        buf = self.kv[layer]
        if buf is None:
            cap = max(2 * self.context, end)
            buf = self.kv[layer] = k.new_empty(2, k.shape[0], k.shape[1], cap, k.shape[3])
        buf[0, :, :, lo + self._keep : end] = k
        buf[1, :, :, lo + self._keep : end] = v
        return buf[0, :, :, lo:end], buf[1, :, :, lo:end]

    def advance(self, t: int) -> None:
        """After all layers appended `t` tokens."""
        self.start, self.length = self._lo, self._keep + t
        self.pos += t

    def decode_ring(self, b: int, heads: int, head_dim: int, like: Tensor) -> DecodeRing:
        """`decode_step`'s window for a batch of `b`, made from the buffers on its first step."""
        if self.ring is None:
            n, end = self.n_past(), self.start + self.length
            past = [None if buf is None else buf[..., end - n : end, :] for buf in self.kv]
            self.ring = DecodeRing(past, self.pos, self.context, b, heads, head_dim, like)
            self.kv = [None] * len(self.kv)
        return self.ring


class DecodeRing:
    """Keys and values of the window as a ring of `context` slots per layer, the token at
    position p in slot p % context: a step writes its slot and attends over all slots (the
    unfilled ones masked by an additive bias until the ring is full), so past keys never
    move and a layer's keys are one contiguous [B * heads, context, head_dim] block. Batched
    matmuls over such blocks run about 3x faster on CPU at 64 rows than over the same keys
    sliced out of a longer buffer, which is what reading them cost before (bench_sampling).
    Attention does not depend on the order of the keys; the sums only round differently.
    """

    def __init__(
        self,
        past: list[Tensor | None],
        pos: int,
        context: int,
        b: int,
        heads: int,
        head_dim: int,
        like: Tensor,
    ) -> None:
        self.context = context
        self.bufs = [like.new_zeros(2, b, heads, context, head_dim) for _ in past]
        slots = torch.arange(pos - (0 if past[0] is None else past[0].shape[3]), pos) % context
        for buf, kv in zip(self.bufs, past, strict=True):
            if kv is not None:
                buf.index_copy_(3, slots.to(buf.device), kv.to(buf.dtype))
        self.keys = [buf[0].view(b * heads, context, head_dim).transpose(1, 2) for buf in self.bufs]
        self.values = [buf[1].view(b * heads, context, head_dim) for buf in self.bufs]
        # [layer][slot]: where a step writes its keys and values, [B, 2, heads, head_dim] (the
        # order of the q/k/v projection's columns)
        self.slots = [buf.transpose(0, 1).unbind(3) for buf in self.bufs]
        # until the ring is full, row p (p < context - 1): 0 for the slots holding positions
        # <= p, -inf for the rest
        filled = torch.arange(context)[None, :] <= torch.arange(context - 1)[:, None]
        bias = torch.zeros(context - 1, 1, context, dtype=like.dtype, device=like.device)
        self.bias = bias.masked_fill_(~filled[:, None, :].to(like.device), float("-inf")).unbind()
        # a step's buffers, written with out= or in place, and views of them made once (a
        # view per step is an op call): the q/k/v projection [B, 5d] (q, k, v, then the
        # swapped q and k), its rotated part, the new keys and values as a slot wants them,
        # q per head (a view at one row; more rows need a copy), the scores, attention out
        d = heads * head_dim
        self.y = like.new_empty(b, 5 * d)
        self.y_qkv, self.y_qk = self.y.narrow(1, 0, 3 * d), self.y.narrow(1, 0, 2 * d)
        self.y_swap = self.y.narrow(1, 3 * d, 2 * d)
        self.y_kv = self.y.narrow(1, d, 2 * d).view(b, 2, heads, head_dim)
        self.y_q = self.y.narrow(1, 0, d)
        self.q = self.y_q.view(b * heads, 1, head_dim) if b == 1 else None
        self.scores = like.new_empty(b * heads, 1, context)
        self.att = like.new_empty(b * heads, 1, head_dim)
        self.att_rows = self.att.view(b, d)

    def unwind(self, pos: int) -> list[Tensor]:
        """The window in position order, [2, B, heads, n, head_dim] per layer (n = the
        `context - 1` keys the next token may see, or fewer)."""
        n = min(pos, self.context - 1)
        slots = (torch.arange(pos - n, pos) % self.context).to(self.bufs[0].device)
        return [buf.index_select(3, slots) for buf in self.bufs]


class DecodeWeights:
    """A GPT's weights rearranged for `GPT.decode_step`, where a step of one token is a chain
    of tiny ops and each op costs more than its arithmetic (bench_sampling): matrices
    transposed for `x @ w`; the rotary half-swap of q and k folded into the q/k/v projection as
    extra columns, so rotating is a multiply-add with per-position tables (which also carry the
    attention scale of q); the composer scale and the logit scale folded into their matrices.
    Same function as `GPT.forward`, rounded differently (a test checks the tolerance).
    """

    def __init__(self, model: GPT) -> None:
        cfg = model.config
        d, heads = cfg.d_model, cfg.n_head
        half = d // heads // 2
        # rot(x) per head is [-x2, x1]: rows of W taken from the other half, first half negated
        swap = torch.arange(d).view(heads, 2, half).flip(1).reshape(d)
        sign = torch.tensor([-1.0, 1.0]).repeat_interleave(half).repeat(heads)[:, None]
        self.model = model
        with torch.no_grad():
            self.composer = model.composer.weight * cfg.composer_scale
            self.layers = []
            for block in model.blocks:
                wq, wk, _ = block.attn.qkv.weight.split(d)
                sign = sign.to(wq)
                w = torch.cat([block.attn.qkv.weight, wq[swap] * sign, wk[swap] * sign])
                self.layers.append(
                    (
                        block.ln1.weight,
                        w.t().contiguous(),
                        block.attn.proj.weight.t().contiguous(),
                        block.ln2.weight,
                        block.mlp.up.weight.t().contiguous(),
                        block.mlp.down.weight.t().contiguous(),
                    )
                )
            self.head = (model.tok.weight * d**-0.5).t().contiguous()
            self.film: Tensor | None = None  # [composer, layer * 4 * d], the norm weights in
            if cfg.condition == "every_layer":
                film = model.film.weight.view(cfg.n_composers, cfg.n_layer, 4, d).clone()
                norms = torch.stack(
                    [torch.stack([blk.ln1.weight, blk.ln2.weight]) for blk in model.blocks]
                )
                film[:, :, 0::2] = norms * (1 + film[:, :, 0::2])
                self.film = film.flatten(1)
        self.cos: tuple[Tensor, ...] = ()  # rows per position: a step indexes a tuple
        self.sin: tuple[Tensor, ...] = ()

    def angles(self, pos: int) -> tuple[Tensor, Tensor]:
        """Rows [3d] and [2d] at `pos`: what multiplies q, k, v and the swapped q, k."""
        if pos >= len(self.cos):
            cfg, device = self.model.config, self.head.device
            cos, sin = self.model.rope(0, max(2 * cfg.context, 2 * pos + 2), device)
            cos, sin = cos.repeat(1, 2 * cfg.n_head), sin.repeat(1, 2 * cfg.n_head)
            scale = (cfg.d_model // cfg.n_head) ** -0.5
            self.cos = torch.cat([cos * scale, cos, torch.ones_like(cos)], 1).unbind()
            self.sin = torch.cat([sin * scale, sin], 1).unbind()
        return self.cos[pos], self.sin[pos]


# -- blocks ----------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        causal: bool,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head)
        qk = apply_rope(qkv[:, :, :2], cos[:, None, None], sin[:, None, None])  # both at once
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2]
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
        film: Tensor | None = None,
    ) -> Tensor:
        """`film` ([4, B, 1, d]: scale and shift of ln1, then of ln2) modulates the norms'
        outputs by composer (`condition: every_layer`)."""
        # F.dropout, not the module: a decoding step is a chain of tiny calls, each module
        # call adds Python overhead
        p, train = self.drop.p, self.training
        h = self.ln1(x) if film is None else torch.addcmul(film[1], self.ln1(x), 1 + film[0])
        x = x + F.dropout(self.attn(h, cos, sin, mask, causal, cache, layer), p, train)
        h = self.ln2(x) if film is None else torch.addcmul(film[3], self.ln2(x), 1 + film[2])
        return x + F.dropout(self.mlp(h), p, train)


# -- the model -------------------------------------------------------------------------------


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)  # also the output head
        self.composer = nn.Embedding(config.n_composers, config.d_model)
        if config.composer_token:
            self.composer_in = nn.Embedding(config.n_composers, config.d_model)
        if config.condition == "every_layer":  # per layer: scale, shift of ln1 and of ln2
            self.film = nn.Embedding(config.n_composers, config.n_layer * 4 * config.d_model)
        self.window = config.context + int(config.composer_token)  # keys a token may see
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=False)
        self._rope_table: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.apply(lambda m: self._init(m, config.d_model**-0.25))
        for name, p in self.named_parameters():  # GPT-2: residual outputs shrink with depth
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.condition == "every_layer":  # zero: training starts as `input` does
            nn.init.zeros_(self.film.weight)

    @staticmethod
    def _init(m: nn.Module, embedding_std: float) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=embedding_std)

    def rope(self, start: int, t: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos and sin at positions start .. start + t - 1, sliced from a table that doubles
        when outgrown: a decoding step would otherwise spend a dozen tiny ops on them."""
        cos, sin = self._rope_table.get(device, (None, None))
        if cos is None or start + t > len(cos):
            n = max(2 * self.config.context, 2 * (start + t))
            with torch.inference_mode(False):  # a table made while sampling serves training
                cos, sin = rope_angles(
                    torch.arange(n, device=device),
                    self.config.d_model // self.config.n_head,
                    self.config.rope_base,
                )
            self._rope_table[device] = cos, sin
        return cos[start : start + t], sin[start : start + t]

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.window)

    def _attention_mask(
        self, t: int, n_past: int, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """(mask, is_causal): causal over the past window, no token seeing more than
        `self.window` keys."""
        window = self.window
        if n_past == 0 and t <= window:
            return None, t > 1
        if t == 1:  # one new token sees its whole (already trimmed) past
            return None, False
        q = torch.arange(n_past, n_past + t, device=device)[:, None]
        k = torch.arange(n_past + t, device=device)[None, :]
        return (k <= q) & (k > q - window), False

    def forward(
        self,
        ids: Tensor,
        composer: Tensor | int,
        cache: KVCache | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> tuple[Tensor, KVCache | None]:
        """Logits [B, T, vocab] for ids [B, T] under composer ids [B] (or one int for all).

        With a `cache`, ids continue the tokens it holds and the cache is updated in place;
        without one, `start_pos` is the absolute position of ids[:, 0]. `last_only` computes
        the logits of the last position only ([B, 1, vocab]), all that sampling needs.
        """
        b, t = ids.shape
        if isinstance(composer, int):
            composer = torch.full((b,), composer, dtype=torch.long, device=ids.device)
        pos0 = cache.pos if cache is not None else start_pos
        n_past = cache.n_past() if cache is not None else 0
        prefix = int(self.config.composer_token and pos0 == 0)  # the composer position
        t += prefix
        cos, sin = self.rope(pos0, t, ids.device)
        mask, causal = self._attention_mask(t, n_past, ids.device)
        if cache is not None:
            cache.begin(t)
        x = self.tok(ids) + self.config.composer_scale * self.composer(composer)[:, None, :]
        if prefix:
            x = torch.cat([self.composer_in(composer)[:, None, :], x], 1)
        x = self.drop(x)
        film = [None] * len(self.blocks)
        if self.config.condition == "every_layer":  # [layer][4, B, 1, d]
            d = self.config.d_model
            film = self.film(composer).view(b, -1, 4, 1, d).permute(1, 2, 0, 3, 4).unbind()
        ckpt = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if ckpt:
                x = checkpoint(
                    block, x, cos, sin, mask, causal, None, i, film[i], use_reentrant=False
                )
            else:
                x = block(x, cos, sin, mask, causal, cache, i, film[i])
        if cache is not None:
            cache.advance(t)
        if last_only:
            x = x[:, -1:]
        elif prefix:
            x = x[:, 1:]
        logits = F.linear(self.ln_f(x), self.tok.weight) * self.config.d_model**-0.5
        return logits, cache

    def decode_step(self, ids: Tensor, composer: Tensor, cache: KVCache) -> Tensor:
        """Logits [B, vocab] of the token after ids [B, 1], continuing `cache`, in eval mode:
        what `forward(ids, composer, cache, last_only=True)` computes (to float rounding, a
        test checks), in about half the ops, on the cache's `DecodeWeights`. On CPU a one-token
        step is a chain of tiny ops, so their number sets its time (bench_sampling)."""
        w = cache.weights
        if w is None:
            w = cache.weights = DecodeWeights(self)
        b, d, heads = ids.shape[0], self.config.d_model, self.config.n_head
        ring = cache.decode_ring(b, heads, d // heads, w.head)
        slot = cache.pos % ring.context
        cos, sin = w.angles(cache.pos)
        bias = ring.bias[cache.pos] if cache.pos < len(ring.bias) else None  # None: full
        # torch.* rather than F.*: the functional wrappers' checks cost a µs a call here
        x = self.tok.weight.index_select(0, ids.view(-1))
        x += w.composer.index_select(0, composer)
        film = None  # per layer: ln1's scale, shift, ln2's scale, shift ([d] at one row)
        if w.film is not None:
            rows = w.film.index_select(0, composer).view(b, -1, d)
            film = rows[0].unbind(0) if b == 1 else rows.unbind(1)
        # h is bf16 under autocast, which addmm_ skips: cast back to x's dtype (a call saved
        # without it)
        cast = torch.is_autocast_enabled(x.device.type)
        for i, (ln1, wqkv, wo, ln2, up, down) in enumerate(w.layers):
            # out=: not autocast, so this projection stays float32 under autocast
            torch.mm(_norm(x, ln1, film, 4 * i), wqkv, out=ring.y)
            ring.y_qkv.mul_(cos)  # v's factor is 1
            ring.y_qk.addcmul_(ring.y_swap, sin)
            ring.slots[i][slot].copy_(ring.y_kv)
            q = ring.q if ring.q is not None else ring.y_q.reshape(b * heads, 1, -1)  # scaled
            # baddbmm with the bias took 1.25x as long as bmm and an add
            scores = torch.bmm(q, ring.keys[i], out=ring.scores)
            if bias is not None:
                scores += bias
            torch.bmm(torch.softmax(scores, -1), ring.values[i], out=ring.att)
            x.addmm_(ring.att_rows, wo)  # x += att @ wo in one op
            h = F.gelu(_norm(x, ln2, film, 4 * i + 2) @ up)
            x.addmm_(h.type_as(x) if cast else h, down)
        cache.pos += 1
        return torch.layer_norm(x, (d,), self.ln_f.weight) @ w.head

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _norm(x: Tensor, weight: Tensor, film: tuple[Tensor, ...] | None, j: int) -> Tensor:
    """`decode_step`'s layer norm: with `film` (the composer's scales and shifts, the norm's
    weight folded into the scales) the scale `film[j]` and shift `film[j + 1]`; at one row
    they are [d] and the layer norm applies them itself (one op call, not two)."""
    if film is None:
        return torch.layer_norm(x, x.shape[-1:], weight)
    scale, shift = film[j], film[j + 1]
    if scale.dim() == 1:
        return torch.layer_norm(x, x.shape[-1:], scale, shift)
    return torch.addcmul(shift, torch.layer_norm(x, x.shape[-1:]), scale)


# -- checkpoints -----------------------------------------------------------------------------


def check_vocab(model: GPT, tokenizer) -> None:
    """A checkpoint trained on another tokenizer would sample nonsense: refuse it."""
    n, pad = len(tokenizer.vocab), tokenizer.pad_token_id
    if model.config.vocab_size != n:
        raise ValueError(
            f"checkpoint vocabulary {model.config.vocab_size} tokens, tokenizer {n}: "
            "the model was trained with another tokenize.remi config"
        )
    if model.config.pad_id != pad:
        raise ValueError(f"checkpoint pad id {model.config.pad_id}, tokenizer {pad}")


def save_model(model: GPT, folder: str | Path) -> None:
    """model.safetensors + config.json, each written atomically."""
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp)
        )
    write_json(folder / CONFIG, model.config.to_dict())


def load_model(folder: str | Path, tokenizer=None, device: str | torch.device = "cpu") -> GPT:
    """The model saved by `save_model`, in eval mode; checked against `tokenizer` if given."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} missing: not a GPT checkpoint folder")
    model = GPT(GPTConfig.from_dict(json.loads((folder / CONFIG).read_text())))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    if tokenizer is not None:
        check_vocab(model, tokenizer)
    return model.to(device).eval()
