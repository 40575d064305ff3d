"""Token rows -> MuseTok encoder/decoder inputs, and a batched per-bar latent extractor.

The row layout is the reference's (``MuseTokEncoder.get_padded_enc_data`` / ``REMIEventDataset``):
one row of ``enc_seqlen`` ids per bar, from its ``Bar_None`` up to the next bar, right-padded with
PAD; the padding mask is True on padding except that positions 0 and 1 are never masked.  Bars
longer than the row are truncated to their first ``enc_seqlen`` tokens; callers get the count so
the loss is visible rather than silent.

The reference encodes a piece in 16-bar segments and pads the last one with empty bars, each
row to 128 tokens.  The encoder is per-bar independent, so ``encode_pieces`` instead packs the
real bars of many pieces into batches of bars of about one length, cut to their longest: it
never encodes padding bars and almost no padding tokens.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from midipipe.musetok.model import PAD_ID, MuseTok

log = logging.getLogger(__name__)

ENC_SEQLEN = 128
MAX_BARS = 16
DEC_SEQLEN = 1280


@dataclass(frozen=True)
class BarRows:
    """Encoder input for the bars of one piece (or one segment)."""

    ids: np.ndarray  # [n_bars, enc_seqlen] int64
    pad_mask: np.ndarray  # [n_bars, enc_seqlen] bool, True = padding
    n_truncated: int  # bars longer than enc_seqlen whose tail was dropped


def bar_spans(bar_starts: Sequence[int], n_tokens: int) -> list[tuple[int, int]]:
    """(start, end) of each bar; the last bar runs to the end of the sequence (EOS included)."""
    if len(bar_starts) == 0:
        return []
    ends = list(bar_starts[1:]) + [n_tokens]
    return list(zip(bar_starts, ends, strict=True))


def rows_from_spans(
    ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    enc_seqlen: int = ENC_SEQLEN,
    pad_id: int = PAD_ID,
) -> BarRows:
    """One padded row per (start, end) span; empty spans give all-PAD rows."""
    arr = np.asarray(ids, dtype=np.int64)
    out = np.full((len(spans), enc_seqlen), pad_id, dtype=np.int64)
    mask = np.ones((len(spans), enc_seqlen), dtype=bool)
    mask[:, :2] = False  # the reference never masks the first two positions
    n_truncated = 0
    for b, (st, ed) in enumerate(spans):
        n = ed - st
        if n > enc_seqlen:
            n_truncated += 1
        n = min(n, enc_seqlen)
        out[b, :n] = arr[st : st + n]
        mask[b, :n] = False
    return BarRows(out, mask, n_truncated)


def bar_rows(
    ids: Sequence[int],
    bar_starts: Sequence[int],
    enc_seqlen: int = ENC_SEQLEN,
    pad_id: int = PAD_ID,
) -> BarRows:
    """Encoder rows for every bar of a piece (no segment padding)."""
    return rows_from_spans(ids, bar_spans(bar_starts, len(ids)), enc_seqlen, pad_id)


def segment_rows(
    ids: Sequence[int],
    bar_starts: Sequence[int],
    segment: int = 0,
    max_bars: int = MAX_BARS,
    enc_seqlen: int = ENC_SEQLEN,
    pad_id: int = PAD_ID,
) -> BarRows:
    """Encoder rows of one ``max_bars`` segment as ``MuseTokEncoder.get_segments`` builds it:
    bars past the end of the piece are empty (all PAD, positions 0-1 unmasked)."""
    spans = bar_spans(bar_starts, len(ids))[segment * max_bars : (segment + 1) * max_bars]
    spans += [(len(ids), len(ids))] * (max_bars - len(spans))
    return rows_from_spans(ids, spans, enc_seqlen, pad_id)


# -- decoder samples ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderSample:
    """One training sample as ``REMIEventDataset.__getitem__`` builds it (no augmentation)."""

    enc: BarRows  # [max_bars, enc_seqlen]
    dec_input: np.ndarray  # [dec_seqlen] (or [length] when pad_to_same=False)
    dec_target: np.ndarray  # same length as dec_input
    bar_pos: np.ndarray  # [max_bars + 1]: bar starts inside the segment, then its length
    length: int  # real (non-PAD) decoder positions, min(segment tokens, dec_seqlen)
    n_bars: int  # real bars in the segment


def dataset_bar_starts(bar_starts: Sequence[int], n_tokens: int) -> list[int]:
    """Bar boundaries the reference dataset uses: a trailing 2-token bar is merged into the
    previous one, and the sequence length is appended as the final boundary."""
    pos = list(bar_starts)
    if pos and pos[-1] == n_tokens:
        pos = pos[:-1]
    if pos and n_tokens - pos[-1] == 2:
        pos = pos[:-1]
    return pos + [n_tokens]


def decoder_sample(
    ids: Sequence[int],
    bar_starts: Sequence[int],
    start_bar: int = 0,
    max_bars: int = MAX_BARS,
    enc_seqlen: int = ENC_SEQLEN,
    dec_seqlen: int = DEC_SEQLEN,
    pad_id: int = PAD_ID,
    pad_to_same: bool = True,
) -> DecoderSample:
    """Teacher-forcing sample for the segment starting at ``start_bar``.

    Pieces with fewer than ``max_bars`` bars always start at bar 0 and keep the whole sequence;
    missing bars repeat the sequence length in ``bar_pos``.  Input is tokens[:-1], target
    tokens[1:], padded to ``dec_seqlen + 1`` first when ``pad_to_same``, then cut to
    ``dec_seqlen``.
    """
    pos = dataset_bar_starts(bar_starts, len(ids))
    if len(pos) > max_bars:
        if not 0 <= start_bar < len(pos) - max_bars:
            raise ValueError(f"start_bar {start_bar} out of range for {len(pos) - 1} bars")
        tokens = list(ids[pos[start_bar] : pos[start_bar + max_bars]])
        starts = [p - pos[start_bar] for p in pos[start_bar : start_bar + max_bars]]
        n_bars = max_bars
    else:
        tokens = list(ids)
        starts = pos + [pos[-1]] * (max_bars - len(pos))
        n_bars = len(pos) - 1
    bar_pos = np.asarray(starts + [len(tokens)], dtype=np.int64)
    enc = rows_from_spans(tokens, list(zip(bar_pos[:-1], bar_pos[1:], strict=True)), enc_seqlen)
    length = len(tokens)
    total = dec_seqlen + 1 if pad_to_same else length + 1
    padded = tokens + [pad_id] * max(0, total - length)
    dec_input = np.asarray(padded[:-1][:dec_seqlen], dtype=np.int64)
    dec_target = np.asarray(padded[1:][:dec_seqlen], dtype=np.int64)
    return DecoderSample(enc, dec_input, dec_target, bar_pos, min(length, dec_seqlen), n_bars)


# -- batched extraction -------------------------------------------------------------------------

PACK_BATCHES = 32  # batches of bars sorted by length together when packing
BUCKET = 8  # packed batches hold bars whose lengths round up to the same multiple of this
TYPICAL_BAR = 32  # tokens: a packed batch holds batch_size * TYPICAL_BAR tokens at most


def _buckets(lengths: list[int], batch_size: int) -> list[tuple[int, int]]:
    """(lo, hi) batches over `lengths` sorted ascending: one length bucket per batch, and as
    many bars as fit `batch_size * TYPICAL_BAR` tokens (more short bars, fewer long ones)."""
    out, lo = [], 0
    while lo < len(lengths):
        top = -(-max(lengths[lo], 2) // BUCKET) * BUCKET
        rows = max(1, batch_size * TYPICAL_BAR // top)
        hi = lo + 1
        while hi < len(lengths) and hi - lo < rows and lengths[hi] <= top:
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


@dataclass
class PadStats:
    """Token positions the encoder ran on, and how many of them were padding (the cost of
    batching bars of different lengths)."""

    bars: int = 0
    positions: int = 0
    padding: int = 0

    @property
    def padded_share(self) -> float:
        return self.padding / self.positions if self.positions else 0.0


@dataclass
class PieceLatents:
    """Per-bar outputs for one piece, in bar order."""

    codes: np.ndarray  # [n_bars, num_quantizers] int64
    latents: np.ndarray  # [n_bars, d_latent] float32
    encoder_out: np.ndarray  # [n_bars, enc_d_model] float32
    n_truncated: int


class _Pending:
    def __init__(self, n_bars: int, n_q: int, d_latent: int, d_model: int, n_trunc: int):
        self.out = PieceLatents(
            np.zeros((n_bars, n_q), np.int64),
            np.zeros((n_bars, d_latent), np.float32),
            np.zeros((n_bars, d_model), np.float32),
            n_trunc,
        )
        self.remaining = n_bars


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 matmuls on CUDA (fp32 elsewhere: CPU bf16 is slower than fp32 on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode_pieces(
    model: MuseTok,
    pieces: Iterable[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 256,
    trim: bool = True,
    pack: bool = True,
    stats: PadStats | None = None,
) -> Iterator[PieceLatents]:
    """Yield one ``PieceLatents`` per ``(ids, bar_starts)`` piece, in input order.

    Bars of many pieces share each batch of ``batch_size`` rows, so short pieces do not waste a
    forward pass. ``pack`` (the default) gathers the bars of up to ``PACK_BATCHES`` batches,
    sorts them by length and batches neighbours, so a batch holds bars of about one length and
    (with ``trim``) is cut to its longest: almost no padding is encoded. Pieces come out once
    their buffer is encoded. ``pack=False`` batches bars in input order (kept as the baseline
    the benchmark compares against). ``trim=False`` pads every row to ``enc_seqlen``, the
    reference layout. The encoder attends within a bar only and padding is masked, so all
    layouts agree to float rounding (~1e-7) and give the same codes. ``stats`` accumulates the
    padded share. Runs under ``torch.inference_mode`` on the model's device, with bf16 autocast
    on CUDA; the caller puts the model in eval mode (a warning is logged otherwise).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if model.training:
        log.warning("encode_pieces called with a model in training mode; dropout is active")
    cfg = model.config
    device = next(model.parameters()).device
    buffer_bars = batch_size * PACK_BATCHES if pack else batch_size
    pending: deque[_Pending] = deque()
    queue: list[tuple[_Pending, int, np.ndarray]] = []  # piece, bar index, its tokens (cut)

    def run_batch(batch: list[tuple[_Pending, int, np.ndarray]]) -> None:
        lengths = [len(tokens) for _, _, tokens in batch]
        width = max(2, *lengths) if trim else cfg.enc_seqlen
        ends = np.cumsum(lengths)
        spans = list(zip(ends - lengths, ends, strict=True))
        flat = np.concatenate([tokens for _, _, tokens in batch])
        rows = rows_from_spans(flat, spans, width, cfg.pad_id)
        if stats is not None:
            stats.bars += len(batch)
            stats.positions += rows.ids.size
            stats.padding += rows.ids.size - int(ends[-1])
        ids = torch.from_numpy(rows.ids).to(device)
        mask = torch.from_numpy(rows.pad_mask).to(device)
        with torch.inference_mode(), _autocast(device):
            enc = model.encode_bars(ids, mask)
        codes = enc.codes.cpu().numpy()
        latents = enc.latents.float().cpu().numpy()
        hidden = enc.encoder_out.float().cpu().numpy()
        for i, (rec, b, _) in enumerate(batch):
            rec.out.codes[b] = codes[i]
            rec.out.latents[b] = latents[i]
            rec.out.encoder_out[b] = hidden[i]
            rec.remaining -= 1

    def flush(final: bool) -> Iterator[PieceLatents]:
        if pack:  # every queued bar, bucketed by length (stable: ties keep input order)
            queue.sort(key=lambda bar: len(bar[2]))
            batches = _buckets([len(tokens) for _, _, tokens in queue], batch_size)
            cut = len(queue)
        else:  # full batches in input order; the rest waits for the next pieces
            cut = len(queue) if final else len(queue) - len(queue) % batch_size
            batches = [(lo, min(lo + batch_size, cut)) for lo in range(0, cut, batch_size)]
        for lo, hi in batches:
            run_batch(queue[lo:hi])
        del queue[:cut]
        while pending and pending[0].remaining == 0:
            yield pending.popleft().out

    for ids, bar_starts in pieces:
        arr = np.asarray(ids, dtype=np.int64)
        spans = bar_spans(bar_starts, len(arr))
        n_trunc = sum(ed - st > cfg.enc_seqlen for st, ed in spans)
        rec = _Pending(len(spans), cfg.num_quantizers, cfg.d_latent, cfg.enc_d_model, n_trunc)
        pending.append(rec)
        queue.extend(
            (rec, b, arr[st : min(ed, st + cfg.enc_seqlen)]) for b, (st, ed) in enumerate(spans)
        )
        if len(queue) >= buffer_bars:
            yield from flush(final=False)
    yield from flush(final=True)
