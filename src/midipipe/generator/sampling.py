"""Sampling REMI from the GPT: classifier-free guidance, a KV cache, and a token grammar.

Guidance runs the conditional and the unconditional (composer 0) stream as one batch of two
through the model, so it costs one forward per token, not two:
logits = uncond + guidance * (cond - uncond).

A small REMI grammar masks the logits before sampling, so whatever the weights, the output is
a token sequence miditok decodes without errors: the token-type successions of miditok's own
`tokens_types_graph`, tightened where its decoder is lenient but its error count is not
(Program -1 before PitchDrum and other programs before Pitch; a time signature only right
after a Bar; notes only after a Position), plus the value rules of `tokens_errors`
(positions move forward inside the bar's length, no pitch twice at one position and
program). With `SampleConfig.ascending` (a model trained with `generator.note_order:
pitch`, chords bottom-up) a pitch must also lie above the pitches already played at its
position and program. `SampleConfig.chord_prior` adds to each pitch's logit the
log-probability, in the training pieces of the row's composer, of its distance in semitones
to the nearest pitch already played at its position and program (`order.py`; bottom-up,
the nearest is the one just below: its step up). A `repair` is a step where the model's
most likely token broke the grammar (the model's logits, before the chord prior), or an
unfinished note cut off the end.

Everything a token step does after the model runs on tensors on the model's device, for all
rows at once: the grammar is a table of successor masks indexed by each row's state, the
repetition penalty a scatter of the recent pitches, top-p a top-k of each row's likeliest
tokens on CPU (a sort on an accelerator). No step copies to the host, so on CUDA nothing
waits for the GPU but the check for finished rows, every `SYNC_EVERY` steps. Each row's
random numbers are drawn from its own generator up front, one per step, which is what
drawing one per step would give: a row's output does not depend on the batch it is sampled
in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import symusic
import torch
from torch import Tensor

from midipipe.core.io import atomic_path, write_json
from midipipe.generator.gpt import GPT, check_vocab

log = logging.getLogger(__name__)

SPECIAL = ("PAD", "BOS", "EOS", "MASK")
SYNC_EVERY = 32  # token steps between checks for finished rows on CUDA (each one waits)
# top-p looks at each row's most likely tokens first and sorts a row's whole vocabulary only
# when its nucleus is larger. On CPU a sort of 32 rows x 533 took 0.1-0.7 ms, a top-128 0.06
# ms. Random weights (bench_sampling), the flattest case, give nuclei of 70 tokens (median),
# 135 at the 99th centile; top-p of their 32 rows took 149 µs per step from the top 192, 187
# from the top 128, 299 from the top 64, 225 sorting all
NUCLEUS_CANDIDATES = 192
# steps whose logits and masks are kept for the repair and masked-mass statistics, computed
# for all of them at once (5 op calls a step fewer, ~10 µs at one row)
STATS_EVERY = 32


@dataclass
class SampleConfig:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 0.95  # nucleus; 1 = off
    repetition_penalty: float = 1.0  # on pitches of the last `repetition_window` tokens; 1 = off
    guidance: float = 1.5  # classifier-free guidance scale; 1 = conditional only
    max_tokens: int = 1024  # new tokens, the primer not counted
    min_tokens: int = 0  # no EOS before this many new tokens (benchmarks fix the length)
    max_bars: int = 0  # most bars in the output, primer included (0 = no limit)
    seed: int = 0
    repetition_window: int = 64
    ascending: bool = False  # pitches at a position and program only go up (`order.py`)
    # weighted log P(distance) per composer id (0: all) and semitone 0..127 from a pitch to
    # the nearest one played at its position and program, added to the logits after the
    # repetition penalty (empty = off)
    chord_prior: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        checks = [
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1] (1 = off), got {self.top_p}"),
            (
                self.repetition_penalty >= 1,
                f"repetition_penalty must be >= 1 (1 = off), got {self.repetition_penalty}",
            ),
            (self.guidance >= 1, f"guidance must be >= 1 (1 = no guidance), got {self.guidance}"),
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (
                0 <= self.min_tokens <= self.max_tokens,
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}",
            ),
            (self.max_bars >= 0, f"max_bars must be >= 0 (0 = no limit), got {self.max_bars}"),
            (
                {len(r) for r in self.chord_prior} <= {128},
                "chord_prior needs, per composer, one value per semitone 0..127",
            ),
            (
                all(math.isfinite(x) for r in self.chord_prior for x in r),
                "chord_prior's log-probabilities must be finite",
            ),
            (
                self.repetition_window >= 0,
                f"repetition_window must be >= 0, got {self.repetition_window}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# -- grammar ---------------------------------------------------------------------------------


class RemiGrammar:
    """The grammar as tables over the vocabulary, built once per tokenizer: a successor mask
    per state (the kind of the last token, plus `start` and `ProgramDrum`), which positions
    may follow a position in a bar of a given length, and what each token does to a row's
    state (`GrammarState`)."""

    def __init__(self, tokenizer) -> None:
        vocab = tokenizer.vocab
        self.n = len(vocab)
        self.kind = [""] * self.n
        self.value = [""] * self.n
        for token, i in vocab.items():
            self.kind[i], self.value[i] = token.split("_", 1)
        self.eos = vocab["EOS_None"]
        self.bar = vocab.get("Bar_None")
        self.pad = tokenizer.pad_token_id
        self.pitch_kinds = {"Pitch", "PitchDrum"}
        kinds = set(self.kind) - set(SPECIAL)
        graph = {k: set(v) & kinds for k, v in tokenizer.tokens_types_graph.items() if k in kinds}
        graph["ProgramDrum"] = graph.get("Program", set()) & {"PitchDrum"}
        if "Program" in graph:
            graph["Program"] = graph["Program"] - {"PitchDrum"}
        for k in graph:
            if k != "Bar":  # a time signature only right after a Bar
                graph[k] -= {"TimeSig"}
        if "Position" in kinds and "TimeSig" in graph:  # notes only after a Position
            graph["TimeSig"] -= {"Program", "Pitch", "PitchDrum"}
        # EOS where a bar could begin: after a whole note, tempo or time signature
        self.complete = {k for k, succ in graph.items() if "Bar" in succ}
        graph["start"] = {"Bar"} if "Bar" in kinds else set(kinds)
        self._tables(tokenizer.config.max_num_pos_per_beat, graph)

    def _tables(self, per_beat: int, graph: dict[str, set[str]]) -> None:
        states = sorted(set(self.kind) - set(SPECIAL) | set(graph))
        index = {s: i for i, s in enumerate(states)}
        self.successors = torch.tensor(
            [[k in graph.get(state, ()) for k in self.kind] for state in states],
            dtype=torch.bool,
        )
        self.successors[:, self.eos] = torch.tensor([s in self.complete for s in states])
        pairs = list(zip(self.kind, self.value, strict=True))
        positions = [int(v) if k == "Position" else -1 for k, v in pairs]
        lengths = sorted(
            {4 * per_beat} | {int(v.split("/")[0]) * per_beat for k, v in pairs if k == "TimeSig"}
        )
        programs = sorted({0} | {int(v) for k, v in pairs if k == "Program"})
        self.n_programs = len(programs)
        # position_ok[(position + 1) * len(lengths) + bar length index, token]: Position
        # tokens move forward inside the bar; other tokens always pass. A row's POSITION field
        # holds (position + 1) * len(lengths), so its row is POSITION + LENGTH
        value = torch.tensor(positions)[None, None, :]
        now = torch.arange(-1, max(positions) + 1)[:, None, None]
        length = torch.tensor(lengths)[None, :, None]
        self.position_ok = ((value < 0) | ((value > now) & (value < length))).flatten(0, 1)
        # what a token does to a row's state fields (FIELDS): set a field to a value, add
        n_pos = len(self.position_ok)
        # Python lists, made a tensor at the end (an element write to a tensor is a µs call)
        keep = [[1] * len(FIELDS) for _ in range(self.n)]
        change = [[0] * len(FIELDS) for _ in range(self.n)]
        is_pitch = [k in self.pitch_kinds for k in self.kind]
        # Pitch tokens (not drums) from low to high: what `ascending` orders
        pitches = [i for i in range(self.n) if self.kind[i] == "Pitch"]
        self.pitch_cols = torch.tensor(
            sorted(pitches, key=lambda i: int(self.value[i])), dtype=torch.long
        )
        self.pitch_midi = torch.tensor([int(self.value[i]) for i in self.pitch_cols.tolist()])
        for i, (k, v) in enumerate(pairs):
            if k in SPECIAL:
                continue
            state = index["ProgramDrum" if k == "Program" and v == "-1" else k]
            field_values = {STATE: state, STATE_ROW: state * n_pos}
            if k == "Bar":
                field_values[POSITION] = 0  # no position yet
                change[i][BARS] = change[i][EPOCH] = 1  # a new bar, nothing played
            elif k == "Position":
                field_values[POSITION] = (int(v) + 1) * len(lengths)
                change[i][EPOCH] = 1
            elif k == "TimeSig":
                field_values[LENGTH] = lengths.index(int(v.split("/")[0]) * per_beat)
            elif k == "Program":
                field_values[PROGRAM] = programs.index(int(v))
                field_values[PROGRAM_AT] = programs.index(int(v)) * (self.n + 1)
            # its column of `played` (the spare one, n, unless a pitch)
            field_values[COLUMN] = i if is_pitch[i] else self.n
            for f, x in field_values.items():
                keep[i][f], change[i][f] = 0, x
        # one row per token, [keep, change]: a step is one index_select and an addcmul
        # (fields * keep + change). PAD's row changes nothing
        self.effect = torch.tensor([a + b for a, b in zip(keep, change, strict=True)])
        self.is_pitch = torch.tensor(is_pitch)
        # succ_forward[state * positions + position row]: the successors of the state that
        # also move forward in the bar (one lookup for the two masks)
        self.succ_forward = (self.successors[:, None] & self.position_ok[None]).flatten(0, 1)
        self.initial = torch.zeros(len(FIELDS), dtype=torch.long)
        self.initial[STATE], self.initial[STATE_ROW] = index["start"], index["start"] * n_pos
        self.initial[LENGTH] = lengths.index(4 * per_beat)  # 4/4 until a TimeSig says otherwise
        self.initial[PROGRAM], self.initial[EPOCH] = programs.index(0), 1
        self.initial[PROGRAM_AT] = programs.index(0) * (self.n + 1)
        self.initial[COLUMN] = self.n  # the spare column until a pitch is played

    def is_complete(self, token: int) -> bool:
        """Whether a sequence may end on `token` (a note, tempo or time signature is whole)."""
        return self.kind[token] in self.complete


# a row's grammar state: last token's kind (or start/ProgramDrum), the same times the rows of
# `position_ok`, position in the bar (as (position + 1) x the number of bar lengths, 0: none
# yet), bar length index, the row's first program row of `played`, program index, the row's
# first element of `played` (flat), the program's offset there, the last token's column,
# bars so far, and a counter that moves with each Bar or Position, so "played at this
# position" is "played in this epoch"
FIELDS = (
    STATE,
    STATE_ROW,
    POSITION,
    LENGTH,
    ROW,
    PROGRAM,
    FLAT,
    PROGRAM_AT,
    COLUMN,
    BARS,
    EPOCH,
) = range(11)
# the sums of fields a step reads: its row of `succ_forward`, its program's row of `played`,
# where its last token goes in `played` (flat), its STATE, its EPOCH (last)
INDEXES = (
    (STATE_ROW, POSITION, LENGTH),
    (ROW, PROGRAM),
    (FLAT, PROGRAM_AT, COLUMN),
    (STATE,),
    (EPOCH,),
)


class GrammarState:
    """Where each row of a batch stands in the grammar, as tensors on `device`: its fields
    (FIELDS) [n, 11], and for each program and pitch the epoch it was last played in."""

    def __init__(
        self,
        grammar: RemiGrammar,
        n: int,
        device: torch.device,
        ascending: bool = False,
        chords: bool = False,
    ) -> None:
        for name in (
            "successors",
            "succ_forward",
            "effect",
            "is_pitch",
            "pitch_cols",
            "pitch_midi",
        ):
            setattr(self, name, getattr(grammar, name).to(device))
        self.ascending = ascending and len(self.pitch_cols) > 0
        # `allowed` keeps the pitches played at each row's position and program (`placed`,
        # [n, pitches] low to high) for `ascending` and for `chord_bias`
        self.chords = chords and len(self.pitch_cols) > 0
        self.placed = torch.zeros(n, len(self.pitch_cols), dtype=torch.bool, device=device)
        # `chord_bias`'s output: its columns other than pitches stay 0
        self.bias = torch.zeros(n, grammar.n, device=device) if self.chords else None
        v = grammar.n
        self.fields = grammar.initial.to(device).repeat(n, 1)
        # row r's program p is row r * programs + p of `played`
        self.fields[:, ROW] = torch.arange(n, device=device) * grammar.n_programs
        self.fields[:, FLAT] = self.fields[:, ROW] * (v + 1)
        # [row and program, token] (flat), one spare token column that non-pitch steps write
        # to; `rows` the same without the spare column
        self.played = torch.zeros(n * grammar.n_programs * (v + 1), dtype=torch.long, device=device)
        self.rows = self.played.as_strided((n * grammar.n_programs, v), (v + 1, 1))
        # what a step reads, as sums of fields (INDEXES), made by one small matmul into a
        # buffer whose columns are views made once (an op call saved is a µs at one row)
        self.sums = torch.zeros(len(FIELDS), len(INDEXES), dtype=torch.long, device=device)
        for j, fields in enumerate(INDEXES):
            self.sums[list(fields), j] = 1
        # integer matmul exists on CPU only (cuBLAS has none): elsewhere a broadcast sum
        self.sum_fields = torch.mm if self.fields.device.type == "cpu" else _sum_fields
        self.index = self.sum_fields(self.fields, self.sums)
        self.forward_row, self.played_row, self.flat, self.state, self.epoch = self.index.unbind(1)
        self.epoch_col = self.index.narrow(1, len(INDEXES) - 1, 1)

    @property
    def bars(self) -> Tensor:
        return self.fields[:, BARS]

    def allowed(self, out: Tensor | None = None) -> Tensor:
        """Bool mask [n, vocab] (into `out` if given): the state's successors, positions
        forward inside the bar, no pitch twice at a position and program, and with
        `ascending` none below one played there (unless that leaves nothing). Keeps the
        pitches played at the position and program in `placed` when `ascending` or `chords`
        needs them."""
        mask = self.succ_forward.index_select(0, self.forward_row)
        here = self.rows.index_select(0, self.played_row)
        if self.ascending or self.chords:
            now = here == self.epoch_col
            mask &= ~now
            torch.index_select(now, 1, self.pitch_cols, out=self.placed)
        else:
            mask &= here != self.epoch_col
        if self.ascending:  # a pitch with one at or above it played here is out
            played = self.placed.flip(1).cumsum(1).flip(1) > 0
            mask.index_copy_(1, self.pitch_cols, mask.index_select(1, self.pitch_cols) & ~played)
        succ = self.successors.index_select(0, self.state)
        return torch.where(mask.any(1, keepdim=True), mask, succ, out=out)

    def chord_bias(self, prior: Tensor) -> Tensor:
        """Float [n, vocab]: each row's `prior` [n, 129] at each pitch's distance in semitones
        (0..127) to the nearest pitch played at its position and program, at column 128 (0)
        where none was, 0 for other tokens. Reads `placed`: call it after this step's
        `allowed`."""
        midi = self.pitch_midi
        below = torch.where(self.placed, midi, -FAR).cummax(1).values
        above = torch.where(self.placed, midi, FAR).flip(1).cummin(1).values.flip(1)
        distance = torch.minimum(midi - below, above - midi).clamp_(max=NONE_PLACED)
        return self.bias.index_copy_(1, self.pitch_cols, prior.gather(1, distance))

    def step(self, tokens: Tensor) -> None:
        """Advance each row by its token [n]; special tokens (PAD for a finished row) change
        nothing (a finished row's last pitch is marked played again, in the same epoch)."""
        keep, change = self.effect.index_select(0, tokens).view(-1, 2, len(FIELDS)).unbind(1)
        self.fields = torch.addcmul(change, keep, self.fields)
        self.sum_fields(self.fields, self.sums, out=self.index)
        self.played.index_copy_(0, self.flat, self.epoch)


FAR = 1 << 10  # a pitch "played" this far away: no pitch was
NONE_PLACED = 128  # the chord prior's column for "no pitch played at the position" (0)


def _sum_fields(fields: Tensor, sums: Tensor, out: Tensor | None = None) -> Tensor:
    """`fields @ sums` for integer tensors on devices without an integer matmul."""
    return torch.sum(fields[:, :, None] * sums, dim=1, out=out)  # [n, fields, 1] x [fields, k]


# -- sampling --------------------------------------------------------------------------------


def choose(
    logits: Tensor,
    allowed: Tensor,
    cfg: SampleConfig,
    penalized: Tensor | None,
    u: Tensor,
    bias: Tensor | None = None,
) -> Tensor:
    """One token per row of float logits [B, V]: repetition penalty (where the bool
    `penalized` [B, V] is set), then the chord prior's `bias` [B, V] added (after the penalty,
    which scales the model's logit only: a log-prior is not shrunk or grown with it), grammar,
    temperature (which divides the prior with the logits), top-k/p, then inverse-CDF draws
    at the uniforms `u` [B, 1] (float64)."""
    if penalized is not None:
        rp = cfg.repetition_penalty
        logits = torch.where(penalized, torch.where(logits > 0, logits / rp, logits * rp), logits)
    if bias is not None:
        logits = logits + bias
    logits = torch.where(allowed, logits, float("-inf"))
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[1]:
        kth = torch.topk(logits, cfg.top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    if cfg.top_p < 1.0:
        # on an accelerator, a sort rather than a wait for the device to say which rows need one
        k = NUCLEUS_CANDIDATES if probs.device.type == "cpu" else probs.shape[1]
        probs = nucleus(probs, cfg.top_p, min(k, probs.shape[1]))
    cdf = probs.cumsum(1, dtype=torch.float64)
    # u < 1 - 2**-24 (a float32 draw), so u * total stays below the total and the pick is
    # a token with probability > 0
    return torch.searchsorted(cdf, u * cdf.narrow(1, -1, 1), right=True).view(-1)


def nucleus(probs: Tensor, top_p: float, k: int) -> Tensor:
    """`probs` [B, V] with all but each row's most likely tokens of mass `top_p` set to 0
    (the first one always kept), from each row's `k` most likely, or from all its tokens
    where the nucleus is larger: the same values as sorting the whole vocabulary."""
    kept, order = probs.topk(k, dim=1)
    drop = kept.cumsum(1) - kept >= top_p
    out = torch.zeros_like(probs).scatter_(1, order, kept.masked_fill(drop, 0.0))
    # rows whose nucleus may go past the k-th token (the check waits for the device)
    if k < probs.shape[1] and not bool(drop[:, -1].all()):
        rows = (~drop[:, -1]).nonzero()[:, 0]
        out[rows] = nucleus(probs[rows], top_p, probs.shape[1])
    return out


class TokenSampler:
    """The token steps of a batch of pieces after the model: grammar, penalty, top-k/p and the
    draw, with each row's history and stats, all on the model's device.

    Rows finish on EOS (or on the Bar past `cfg.max_bars`) and are fed PAD from then on, so
    all rows stay in step. Row i draws its uniforms from `gens[i]`, one per step it is live.
    """

    def __init__(
        self,
        grammar: RemiGrammar,
        cfg: SampleConfig,
        gens: Sequence[torch.Generator],
        primers: Sequence[Sequence[int]],
        bos: int,
        device: torch.device,
        composers: Sequence[int] = (),
    ) -> None:
        self.g, self.cfg, self.n = grammar, cfg, len(primers)
        start = [[bos, *p] for p in primers]
        self.length = len(start[0])
        self.hist = torch.full(
            (self.n, self.length + cfg.max_tokens), grammar.pad, dtype=torch.long, device=device
        )
        self.hist[:, : self.length] = torch.tensor(start, dtype=torch.long, device=device)
        self.columns = self.hist.unbind(1)  # views, one per position
        self.state = GrammarState(grammar, self.n, device, cfg.ascending, bool(cfg.chord_prior))
        for j in range(1, self.length):
            self.state.step(self.hist[:, j])
        u = torch.stack([torch.rand(cfg.max_tokens, generator=g) for g in gens], 1)
        self.u = u.double().to(device)[:, :, None].unbind()  # per step [row, 1]
        self.is_pitch = self.state.is_pitch
        # on CPU (where a check waits for nothing) the chord prior is skipped at steps where
        # no row may play a pitch (3 of 4 in a note's tokens): it changes nothing there
        self.skip_chords = device.type == "cpu"
        self.prior = None  # each row's composer's chord prior (row 0's without composers)
        if cfg.chord_prior:
            rows = torch.tensor(list(composers) or [0] * self.n, device=device)
            if max(composers, default=0) >= len(cfg.chord_prior):
                raise ValueError(
                    f"chord_prior has {len(cfg.chord_prior)} composer rows; a row asks "
                    f"for composer id {max(composers)}"
                )
            table = torch.tensor(cfg.chord_prior, dtype=torch.float32, device=device)
            table = torch.nn.functional.pad(table, (0, 1))  # NONE_PLACED: no bias
            self.prior = table.index_select(0, rows)
        self.not_eos = torch.arange(grammar.n, device=device) != grammar.eos
        self.pad = torch.tensor(grammar.pad, device=device)
        self.live = torch.ones(self.n, dtype=torch.bool, device=device)
        # per step and row: whether the model's top token was allowed, the mass masked off
        # (`tally`, from the last STATS_EVERY steps' logits and masks), whether the row ended
        self.top_ok = torch.zeros(cfg.max_tokens, self.n, 1, dtype=torch.bool, device=device)
        self.off = torch.zeros(cfg.max_tokens, self.n, dtype=torch.float32, device=device)
        self.ends = torch.zeros(cfg.max_tokens, self.n, dtype=torch.bool, device=device)
        self.ends_at = self.ends.unbind()  # views: tuples, not a tensor index per step
        kept = min(STATS_EVERY, cfg.max_tokens)
        self.seen_logits = torch.empty(kept, self.n, grammar.n, device=device)
        self.seen_allowed = torch.empty(kept, self.n, grammar.n, dtype=torch.bool, device=device)
        self.logits_at, self.allowed_at = self.seen_logits.unbind(), self.seen_allowed.unbind()
        self.t = 0
        self.times: list[float] = []
        self.t0 = time.perf_counter()

    def seen(self, last: int) -> Tensor:
        """Each row's last `last` tokens [n, <= last] (BOS and primer included)."""
        return self.hist[:, max(0, self.length - last) : self.length]

    def penalized(self) -> Tensor | None:
        """Bool [n, V]: the pitches among each row's last `repetition_window` tokens (None
        when the penalty is off)."""
        cfg = self.cfg
        if cfg.repetition_penalty == 1.0:
            return None
        out = torch.zeros(self.n, self.g.n, dtype=torch.bool, device=self.hist.device)
        if cfg.repetition_window:
            out.scatter_(1, self.seen(cfg.repetition_window), True)
        return out & self.is_pitch

    def step(self, logits: Tensor) -> Tensor:
        """Sample one token per row from float logits [n, V]; returns what to feed next [n]
        (PAD for finished rows)."""
        cfg, g, t = self.cfg, self.g, self.t
        i = t % len(self.allowed_at)
        allowed = self.state.allowed(out=self.allowed_at[i])
        if t < cfg.min_tokens:
            allowed &= self.not_eos
        bias = None
        if self.prior is not None and (
            not self.skip_chords or bool(allowed.index_select(1, self.state.pitch_cols).any())
        ):
            bias = self.state.chord_bias(self.prior)
        self.logits_at[i].copy_(logits)
        tokens = choose(logits, allowed, cfg, self.penalized(), self.u[t], bias)
        end = self.ends_at[t]
        torch.eq(tokens, g.eos, out=end)
        if cfg.max_bars and g.bar is not None:
            end |= (tokens == g.bar) & (self.state.bars >= cfg.max_bars)
        end &= self.live
        self.live ^= end  # end only where live
        fed = torch.where(self.live, tokens, self.pad, out=self.columns[self.length])
        self.state.step(fed)
        self.length += 1
        self.t += 1
        if i == len(self.allowed_at) - 1:
            self.tally(self.t - i - 1, i + 1)
        self.times.append(time.perf_counter() - self.t0)
        return fed

    def tally(self, start: int, steps: int) -> None:
        """The statistics of the `steps` steps from `start`, whose logits and masks are the
        first `steps` kept."""
        logits, allowed = self.seen_logits[:steps], self.seen_allowed[:steps]
        top_ok, off = self.top_ok[start : start + steps], self.off[start : start + steps]
        torch.gather(allowed, 2, logits.argmax(2, keepdim=True), out=top_ok)
        torch.sum(torch.softmax(logits, 2).masked_fill_(allowed, 0.0), 2, out=off)

    def finished(self) -> bool:
        """Whether every row has ended (waits for the device)."""
        return not bool(self.live.any())

    def results(self, guided: Sequence[bool]) -> list[tuple[list[int], dict]]:
        """Each row's ids and stats (`finish_row`); row i's tokens/s over the time until it
        finished."""
        end = time.perf_counter() - self.t0
        if self.t % len(self.allowed_at):  # the steps since the last tally
            self.tally(self.t - self.t % len(self.allowed_at), self.t % len(self.allowed_at))
        hist = self.hist[:, : self.length].tolist()
        # a row was live at the steps up to the one that ended it
        ends = self.ends[: self.t]
        done = torch.where(ends.any(0), ends.int().argmax(0), -1)
        steps = torch.arange(self.t, device=done.device)[:, None]
        live = (done < 0) | (steps <= done)
        new = live.sum(0).tolist()
        repairs = (~self.top_ok[: self.t, :, 0] & live).sum(0).tolist()
        masked = torch.where(live, self.off[: self.t].double(), 0.0).sum(0).tolist()
        done_at = done.tolist()
        return [
            finish_row(
                self.g,
                hist[i],
                new[i],
                repairs[i],
                masked[i],
                self.times[done_at[i]] if done_at[i] >= 0 else end,
                guided[i],
            )
            for i in range(self.n)
        ]


def sync_every(device: torch.device) -> int:
    """Steps between checks for finished rows: every step on CPU (a check costs nothing
    there), every `SYNC_EVERY` on an accelerator (a check waits for it)."""
    return 1 if device.type == "cpu" else SYNC_EVERY


def inference_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast and TF32 matmuls on CUDA (the caller's TF32 settings restored after);
    nothing on CPU. Only around the model: the draw's float64 CDF must stay float64."""
    return cuda_precision() if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def cuda_precision():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def run_steps(
    sampler: TokenSampler, forward: Callable[[Tensor], Tensor], feed: Tensor, device
) -> None:
    """Alternate `forward` (fed tokens [n, t] -> float logits [n, V] of the next one) and a
    sampler step until every row ended or `max_tokens` steps ran."""
    every = sync_every(device)
    for t in range(sampler.cfg.max_tokens):
        fed = sampler.step(forward(feed))
        if t == sampler.cfg.max_tokens - 1 or ((t + 1) % every == 0 and sampler.finished()):
            return
        feed = fed.view(-1, 1)


@dataclass
class Request:
    """One piece to sample: its composer id, primer ids and random seed."""

    composer_id: int
    primer: Sequence[int] = ()
    seed: int = 0


def generate(
    model: GPT,
    tokenizer,
    composer_id: int,
    primer_ids: Sequence[int] | None = None,
    cfg: SampleConfig | None = None,
    use_cache: bool = True,
) -> tuple[list[int], dict]:
    """REMI ids (primer included, no BOS/EOS) continuing `primer_ids` for `composer_id`, and
    stats {tokens, bars, repairs, trimmed, masked_mass, tokens_per_s, guided}.

    Without the cache every step recomputes the last `context` tokens (identical output while
    the sequence fits the context).
    """
    cfg = cfg or SampleConfig()
    request = Request(composer_id, primer_ids or (), cfg.seed)
    return generate_batch(model, tokenizer, [request], cfg, use_cache)[0]


@torch.inference_mode()
def generate_batch(
    model: GPT,
    tokenizer,
    requests: Sequence[Request],
    cfg: SampleConfig,
    use_cache: bool = True,
) -> list[tuple[list[int], dict]]:
    """`generate` for several pieces at once, one row of a batch each (`cfg.seed` unused:
    each request has its own). On CPU a token step of a small model costs about the same for
    one row as for dozens, so a batch samples many pieces in the time of one. Primers must be
    equally long (after dropping special tokens): rows advance in lockstep. `tokens_per_s`
    is per row (its tokens over the time until it finished).
    """
    check_vocab(model, tokenizer)
    for r in requests:
        if not 0 <= r.composer_id < model.config.n_composers:
            raise ValueError(
                f"composer id {r.composer_id} outside 0..{model.config.n_composers - 1}"
            )
    grammar = RemiGrammar(tokenizer)
    primers = [[t for t in r.primer if grammar.kind[t] not in SPECIAL] for r in requests]
    if len({len(p) for p in primers}) > 1:
        raise ValueError("generate_batch: primers must have the same length")
    device = next(model.parameters()).device
    n, context = len(requests), model.config.context
    ids = [r.composer_id for r in requests]
    guided = cfg.guidance != 1.0 and any(ids)
    composers = torch.tensor(ids + [0] * n if guided else ids, device=device)
    gens = [torch.Generator().manual_seed(r.seed) for r in requests]
    sampler = TokenSampler(grammar, cfg, gens, primers, tokenizer.vocab["BOS_None"], device, ids)
    cache = model.new_cache() if use_cache else None
    model.eval()

    def forward(feed: Tensor) -> Tensor:
        if cache is None:  # the last `context` tokens again
            feed = sampler.seen(context)
        start = sampler.length - feed.shape[1]
        feed = feed.repeat(2, 1) if guided else feed
        with inference_precision(device):
            # the module forward starts a sequence (it adds the composer position, if any)
            if cache is not None and feed.shape[1] == 1 and cache.pos > 0:
                last = model.decode_step(feed, composers, cache)
            else:
                logits, _ = model(feed, composers, cache, start_pos=start, last_only=True)
                last = logits[:, -1]
        last = last.float()
        return mix_guidance(last, cfg.guidance) if guided else last

    run_steps(sampler, forward, sampler.seen(sampler.length), device)
    return sampler.results([bool(i) and guided for i in ids])


def mix_guidance(logits: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance: [2n, vocab] logits of n conditional rows then their n
    unconditional twins -> [n, vocab], uncond + guidance * (cond - uncond)."""
    cond, uncond = logits.view(2, logits.shape[0] // 2, -1).unbind()
    return torch.sub(cond, uncond).mul_(guidance).add_(uncond)


def finish_row(
    grammar: RemiGrammar,
    seq: list[int],
    new: int,
    repairs: int,
    masked: float,
    elapsed: float,
    guided: bool,
) -> tuple[list[int], dict]:
    """A row's ids without BOS and PAD, cut back to its last whole note, and its stats."""
    ids = [t for t in seq[1:] if grammar.kind[t] not in SPECIAL]
    trimmed = 0
    while ids and not grammar.is_complete(ids[-1]):  # an unfinished note would be lost
        ids.pop()
        trimmed += 1
    stats = {
        "tokens": new,
        "bars": sum(1 for t in ids if t == grammar.bar),
        "repairs": repairs + int(trimmed > 0),
        "trimmed": trimmed,
        "masked_mass": round(masked / max(1, new), 6),
        "tokens_per_s": round(new / max(elapsed, 1e-9), 2),
        "guided": guided,
    }
    return ids, stats


def to_midi(tokenizer, ids: Sequence[int], path: str | Path) -> Path:
    """Decode ids with miditok into a MIDI file, and keep the ids and tokens beside it as JSON."""
    path = Path(path)
    ids = [int(i) for i in ids]
    score = tokenizer.decode(ids) if ids else symusic.Score(tokenizer.time_division)
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))
    names = {i: t for t, i in tokenizer.vocab.items()}
    write_json(path.with_suffix(".json"), {"ids": ids, "tokens": [names[i] for i in ids]})
    log.info("wrote %s (%d tokens, %d notes)", path, len(ids), score.note_num())
    return path


def load_tokens(path: str | Path) -> list[int]:
    """The ids `to_midi` stored beside a MIDI file."""
    return json.loads(Path(path).with_suffix(".json").read_text())["ids"]
