"""MuseTok RVQ-VAE (Yuer867/MuseTok, ICASSP 2026) re-implemented for per-bar latents.

Each bar (a row of up to ``enc_seqlen`` token ids) is encoded by a post-norm Transformer; the
output at position 0 is projected to ``d_latent`` and quantized by a residual SimVQ.  The decoder is
a causal Transformer whose input gets, before every layer, a projection of the latent of the bar
each position belongs to.

Submodule names mirror the reference ``TransformerResidualVQ`` so that its ``state_dict`` (including
the unused ``encoder.tr_encoder_layer`` template and the ``pe.pe`` table) loads with
``strict=True``.  Internally tensors are sequence-first, as in the reference, because the
non-batch-first ``nn.TransformerEncoderLayer`` path is what the reference numbers come from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import ResidualSimVQ

PAD_ID = 167
N_TOKEN = 168


@dataclass(frozen=True)
class MuseTokConfig:
    """Constructor sizes of the model plus the data window it was trained with."""

    enc_n_layer: int = 12
    enc_n_head: int = 8
    enc_d_model: int = 512
    enc_d_ff: int = 2048
    dec_n_layer: int = 12
    dec_n_head: int = 8
    dec_d_model: int = 512
    dec_d_ff: int = 2048
    d_latent: int = 128
    d_embed: int = 512
    n_token: int = N_TOKEN
    num_quantizers: int = 16
    codebook_size: int = 2048
    rotation_trick: bool = True
    enc_dropout: float = 0.1
    dec_dropout: float = 0.1
    enc_activation: str = "relu"
    dec_activation: str = "relu"
    max_pos: int = 20480
    enc_seqlen: int = 128
    max_bars: int = 16
    dec_seqlen: int = 1280
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        # The reference adds a d_embed-wide sinusoid to d_model-wide embeddings and shares one
        # token embedding between encoder and decoder, so these three must agree.
        if not self.d_embed == self.enc_d_model == self.dec_d_model:
            raise ValueError(
                "d_embed, enc_d_model and dec_d_model must be equal "
                f"(got {self.d_embed}, {self.enc_d_model}, {self.dec_d_model})"
            )
        if self.pad_id != self.n_token - 1:
            raise ValueError(f"pad_id must be n_token - 1 (got {self.pad_id}, {self.n_token})")
        if self.max_pos < max(self.enc_seqlen, self.dec_seqlen):
            raise ValueError("max_pos must cover enc_seqlen and dec_seqlen")

    # -- named sizes -------------------------------------------------------------------------

    @classmethod
    def official(cls) -> MuseTokConfig:
        """config/tokenization.yaml of the reference: the released MuseTok-Large tokenizer."""
        return cls()

    @classmethod
    def large(cls) -> MuseTokConfig:
        """MuseTok-Large: 16 residual levels x 2048 codes (same as ``official``)."""
        return cls(num_quantizers=16, codebook_size=2048)

    @classmethod
    def small(cls) -> MuseTokConfig:
        """MuseTok-Small: same Transformer, 8 residual levels x 1024 codes."""
        return cls(num_quantizers=8, codebook_size=1024)

    @classmethod
    def cpu_default(cls) -> MuseTokConfig:
        """A few-hundred-k-parameter model that trains in minutes on 2 CPU cores."""
        return cls(
            enc_n_layer=2,
            enc_n_head=4,
            enc_d_model=128,
            enc_d_ff=256,
            dec_n_layer=2,
            dec_n_head=4,
            dec_d_model=128,
            dec_d_ff=256,
            d_latent=64,
            d_embed=128,
            num_quantizers=8,
            codebook_size=256,
            max_pos=2048,
        )

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MuseTokConfig:
        """Accept our own ``to_dict`` output, the reference constructor kwargs (``d_vae_latent``),
        a yaml ``model`` section (``d_latent``), or the test-vector ``config.json`` layout
        (``constructor`` + ``data``).  Unknown keys are ignored; ``rvq_type`` must be SimVQ."""
        flat: dict[str, Any] = {}
        if "constructor" in data or "data" in data:
            flat.update(data.get("constructor", {}))
            flat.update(data.get("data", {}))
            if "positional_encoding_max_pos" in data:
                flat["max_pos"] = data["positional_encoding_max_pos"]
        else:
            flat.update(data)
        if "d_vae_latent" in flat:
            flat.setdefault("d_latent", flat["d_vae_latent"])
        rvq_type = str(flat.get("rvq_type", "SimVQ"))
        if rvq_type.lower() != "simvq":
            raise ValueError(f"only rvq_type SimVQ is supported, got {rvq_type!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in names})


# -- building blocks ----------------------------------------------------------------------------


def sinusoid_table(max_pos: int, d: int) -> Tensor:
    """[max_pos, 1, d] table: sin on even channels, cos on odd ones (Vaswani et al.)."""
    pos = torch.arange(max_pos, dtype=torch.float).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    table = torch.zeros(max_pos, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.unsqueeze(1)


def causal_mask(n: int, device: torch.device | None = None) -> Tensor:
    """Float mask, 0 on and below the diagonal and -inf above (as the reference passes it)."""
    mask = torch.full((n, n), float("-inf"), device=device)
    return torch.triu(mask, diagonal=1)


class TokenEmbedding(nn.Module):
    """Lookup scaled by sqrt(d_model); named ``emb_lookup`` for state_dict compatibility."""

    def __init__(self, n_token: int, d_model: int) -> None:
        super().__init__()
        self.emb_lookup = nn.Embedding(n_token, d_model)
        self.scale = d_model**0.5

    def forward(self, ids: Tensor) -> Tensor:
        return self.emb_lookup(ids) * self.scale


class PositionalEncoding(nn.Module):
    """Holds the persistent ``pe`` buffer ([max_pos, 1, d]) that the checkpoint carries."""

    def __init__(self, d: int, max_pos: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_pos, d))

    def forward(self, seq_len: int) -> Tensor:
        return self.pe[:seq_len]


class BarEncoder(nn.Module):
    """Post-norm Transformer over one bar; returns the last layer at position 0."""

    def __init__(self, cfg: MuseTokConfig) -> None:
        super().__init__()
        # The template layer is deep-copied by nn.TransformerEncoder; it is never run, but the
        # reference state_dict contains it, so keep it registered.
        self.tr_encoder_layer = nn.TransformerEncoderLayer(
            cfg.enc_d_model, cfg.enc_n_head, cfg.enc_d_ff, cfg.enc_dropout, cfg.enc_activation
        )
        self.tr_encoder = nn.TransformerEncoder(
            self.tr_encoder_layer, cfg.enc_n_layer, enable_nested_tensor=False
        )

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return self.tr_encoder(x, src_key_padding_mask=padding_mask)[0]


class SegmentDecoder(nn.Module):
    """Causal post-norm Transformer; the projected bar latent is added before every layer."""

    def __init__(self, cfg: MuseTokConfig) -> None:
        super().__init__()
        self.seg_emb_proj = nn.Linear(cfg.d_latent, cfg.dec_d_model, bias=False)
        self.decoder_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.dec_d_model, cfg.dec_n_head, cfg.dec_d_ff, cfg.dec_dropout, cfg.dec_activation
            )
            for _ in range(cfg.dec_n_layer)
        )

    def forward(self, x: Tensor, seg_emb: Tensor) -> Tensor:
        mask = causal_mask(x.size(0), x.device)
        seg = self.seg_emb_proj(seg_emb)
        for layer in self.decoder_layers:
            x = layer(x + seg, src_mask=mask)
        return x


def _reference_init(module: nn.Module) -> None:
    """The reference's init: N(0, 0.01) for Linear/Embedding weights, N(1, 0.01) LayerNorm
    weights, zero biases.  Matched by class name, so attention ``out_proj`` is included."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if weight is None:
        return
    if "Linear" in name or "Embedding" in name:
        nn.init.normal_(weight, 0.0, 0.01)
    elif "LayerNorm" in name:
        nn.init.normal_(weight, 1.0, 0.01)
    else:
        return
    if bias is not None and "Embedding" not in name:
        nn.init.zeros_(bias)


# -- model --------------------------------------------------------------------------------------


class BarEncoding(NamedTuple):
    encoder_out: Tensor  # [B, enc_d_model]
    quantizer_input: Tensor  # [B, d_latent]
    latents: Tensor  # [B, d_latent]
    codes: Tensor  # [B, num_quantizers] int64


class MuseTokOutput(NamedTuple):
    logits: Tensor  # [B, T, n_token]
    commit_loss: Tensor  # scalar, summed over quantizer levels
    codes: Tensor  # [B, n_bars, num_quantizers]


class MuseTok(nn.Module):
    """Residual-SimVQ bar tokenizer with a latent-conditioned causal decoder.

    Public tensors are batch-first; see ``encode_bars``, ``decode``, ``latents_from_codes`` and
    ``forward`` (training).
    """

    def __init__(self, config: MuseTokConfig) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        # Registration order follows the reference so that seeded construction draws the same
        # random numbers in the same order.
        self.token_emb = TokenEmbedding(cfg.n_token, cfg.enc_d_model)
        self.emb_dropout = nn.Dropout(cfg.enc_dropout)
        self.pe = PositionalEncoding(cfg.d_embed, cfg.max_pos)
        self.encoder = BarEncoder(cfg)
        self.enc_out_proj = nn.Linear(cfg.enc_d_model, cfg.d_latent)
        self.residual_sim_vq = ResidualSimVQ(
            dim=cfg.d_latent,
            num_quantizers=cfg.num_quantizers,
            codebook_size=cfg.codebook_size,
            rotation_trick=cfg.rotation_trick,
        )
        self.decoder = SegmentDecoder(cfg)
        self.dec_out_proj = nn.Linear(cfg.dec_d_model, cfg.n_token)
        self.apply(_reference_init)

    # -- embedding ------------------------------------------------------------------------------

    def _embed(self, ids_seq_first: Tensor) -> Tensor:
        """[T, B] ids -> [T, B, d]: scaled embedding (+dropout) plus the sinusoid rows 0..T-1."""
        emb = self.emb_dropout(self.token_emb(ids_seq_first))
        return emb + self.pe(ids_seq_first.size(0))

    # -- encoder + quantizer ----------------------------------------------------------------------

    def encode_hidden(self, ids: Tensor, pad_mask: Tensor) -> Tensor:
        """Encoder output at position 0 for a flat batch of bars: [B, L] -> [B, enc_d_model]."""
        x = self._embed(ids.t().contiguous())
        return self.encoder(x, pad_mask)

    def quantize(self, quantizer_input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residual SimVQ on [..., d_latent]; returns (latents, codes, per-level commit loss)."""
        shape = quantizer_input.shape
        latents, codes, losses = self.residual_sim_vq(quantizer_input.reshape(1, -1, shape[-1]))
        return latents.reshape(shape), codes.reshape(*shape[:-1], codes.size(-1)), losses

    def encode_bars(self, ids: Tensor, pad_mask: Tensor) -> BarEncoding:
        """Encode independent bars.

        ids: [B, enc_seqlen] int64 token rows; pad_mask: [B, enc_seqlen] bool, True = padding.
        Bars of different pieces may share a batch: the encoder attends only within a bar.
        """
        encoder_out = self.encode_hidden(ids, pad_mask)
        quantizer_input = self.enc_out_proj(encoder_out)
        latents, codes, _ = self.quantize(quantizer_input)
        return BarEncoding(encoder_out, quantizer_input, latents, codes)

    def latents_from_codes(self, codes: Tensor) -> Tensor:
        """Sum of the selected codebook vectors: [..., num_quantizers] -> [..., d_latent]."""
        flat = codes.reshape(-1, codes.size(-1))
        out = self.residual_sim_vq.get_output_from_indices(flat)
        return out.reshape(*codes.shape[:-1], out.size(-1))

    # -- decoder ----------------------------------------------------------------------------------

    @staticmethod
    def segment_embedding(latents: Tensor, bar_pos: Tensor, seq_len: int) -> Tensor:
        """Per-position latent, sequence-first [seq_len, B, d_latent].

        latents: [B, n_bars, d]; bar_pos: [B, n_bars + 1] non-decreasing bar starts followed by
        the segment length.  Position p takes bar b with bar_pos[b] <= p < bar_pos[b + 1];
        positions at or past the segment length get zeros.
        """
        n_bars = latents.size(1)
        pos = torch.arange(seq_len, device=latents.device)
        bar_pos = bar_pos.to(latents.device)
        # number of bar ends <= p == index of the bar containing p (n_bars when past the end)
        bar_idx = (pos[None, :, None] >= bar_pos[:, None, 1:]).sum(-1)  # [B, T]
        inside = (bar_idx < n_bars) & (pos[None, :] >= bar_pos[:, :1])
        gathered = torch.gather(
            latents,
            1,
            bar_idx.clamp(max=n_bars - 1)[..., None].expand(-1, -1, latents.size(-1)),
        )
        seg = gathered * inside[..., None].to(latents.dtype)
        return seg.transpose(0, 1).contiguous()

    def decode_with_segment_embedding(self, dec_inp: Tensor, seg_emb: Tensor) -> Tensor:
        """Teacher-forced/generation decoder: dec_inp [B, T], seg_emb [T, B, d_latent]
        -> logits [B, T, n_token]."""
        x = self._embed(dec_inp.t().contiguous())
        out = self.dec_out_proj(self.decoder(x, seg_emb))
        return out.transpose(0, 1)

    def decode(self, latents: Tensor, dec_inp: Tensor, bar_pos: Tensor) -> Tensor:
        """latents [B, n_bars, d_latent], dec_inp [B, T], bar_pos [B, n_bars + 1] -> logits."""
        seg = self.segment_embedding(latents, bar_pos, dec_inp.size(1))
        return self.decode_with_segment_embedding(dec_inp, seg)

    # -- training ---------------------------------------------------------------------------------

    def forward(
        self, enc_ids: Tensor, enc_pad_mask: Tensor, dec_inp: Tensor, bar_pos: Tensor
    ) -> MuseTokOutput:
        """Training pass over segments.

        enc_ids, enc_pad_mask: [B, n_bars, enc_seqlen]; dec_inp: [B, T]; bar_pos: [B, n_bars+1].
        Returns logits [B, T, n_token] and the commitment loss summed over levels.
        """
        b, n_bars, seqlen = enc_ids.shape
        hidden = self.encode_hidden(enc_ids.reshape(-1, seqlen), enc_pad_mask.reshape(-1, seqlen))
        q_in = self.enc_out_proj(hidden).reshape(b, n_bars, -1)
        latents, codes, losses = self.residual_sim_vq(q_in)
        logits = self.decode(latents, dec_inp, bar_pos)
        return MuseTokOutput(logits, losses.sum(), codes)

    def compute_loss(
        self, out: MuseTokOutput, target: Tensor, beta: float = 1.0
    ) -> dict[str, Tensor]:
        """Next-token cross-entropy (PAD ignored) + beta * commitment loss, as in training."""
        recons = F.cross_entropy(
            out.logits.reshape(-1, out.logits.size(-1)),
            target.reshape(-1),
            ignore_index=self.config.pad_id,
        )
        return {
            "total_loss": recons + beta * out.commit_loss,
            "recons_loss": recons,
            "commit_loss": out.commit_loss,
        }
