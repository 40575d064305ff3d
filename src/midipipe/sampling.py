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
program). A `repair` is a step where the model's most likely token broke the grammar, or an
unfinished note cut off the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import symusic
import torch

from midipipe.models.gpt import GPT, check_vocab
from midipipe.shards import atomic_path, write_json

log = logging.getLogger(__name__)

SPECIAL = ("PAD", "BOS", "EOS", "MASK")


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
                self.repetition_window >= 0,
                f"repetition_window must be >= 0, got {self.repetition_window}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# -- grammar ---------------------------------------------------------------------------------


class RemiGrammar:
    """Which token ids may come next, given the tokens so far (fed one by one to `step`)."""

    def __init__(self, tokenizer) -> None:
        vocab = tokenizer.vocab
        self.n = len(vocab)
        self.kind = [""] * self.n
        self.value = [""] * self.n
        for token, i in vocab.items():
            self.kind[i], self.value[i] = token.split("_", 1)
        self.eos = vocab["EOS_None"]
        self.bar = vocab.get("Bar_None")
        self.pos_per_beat = tokenizer.config.max_num_pos_per_beat
        kinds = set(self.kind) - set(SPECIAL)
        self.masks = {k: torch.tensor([t == k for t in self.kind]) for k in kinds}
        by_value = sorted(
            (int(self.value[i]), i) for i in range(self.n) if self.kind[i] == "Position"
        )
        self.position_ids = torch.tensor([i for _, i in by_value], dtype=torch.long)
        self.position_values = [v for v, _ in by_value]
        self.pitch_kinds = {"Pitch", "PitchDrum"}

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
        self.successors = {}
        for key, succ in graph.items():
            mask = torch.zeros(self.n, dtype=torch.bool)
            for k in succ:
                mask |= self.masks[k]
            mask[self.eos] = key in self.complete
            self.successors[key] = mask
        self.reset()

    def reset(self) -> None:
        self.state = "start"
        self.position = -1
        self.bar_positions = 4 * self.pos_per_beat  # 4/4 until a TimeSig says otherwise
        self.program = 0
        self.played: set[tuple[int, int]] = set()  # (program, pitch id) at this position
        self.bars = 0

    def step(self, token: int) -> None:
        kind, value = self.kind[token], self.value[token]
        if kind in SPECIAL:
            return
        if kind == "Bar":
            self.bars += 1
            self.position, self.played = -1, set()
        elif kind == "TimeSig":
            self.bar_positions = int(value.split("/")[0]) * self.pos_per_beat
        elif kind == "Position":
            self.position, self.played = int(value), set()
        elif kind == "Program":
            self.program = int(value)
        elif kind in self.pitch_kinds:
            self.played.add((self.program, token))
        self.state = "ProgramDrum" if kind == "Program" and self.program == -1 else kind

    def allowed(self) -> torch.Tensor:
        """Bool mask over the vocabulary."""
        mask = self.successors[self.state].clone()
        if mask[self.position_ids].any():
            lo = next(
                (i for i, v in enumerate(self.position_values) if v > self.position),
                len(self.position_values),
            )
            hi = next(
                (i for i, v in enumerate(self.position_values) if v >= self.bar_positions),
                len(self.position_values),
            )
            mask[self.position_ids[:lo]] = False
            mask[self.position_ids[hi:]] = False
        for program, token in self.played:
            if program == self.program:
                mask[token] = False
        if not mask.any():  # every pitch used at this position: drop the value rules
            mask = self.successors[self.state].clone()
        return mask

    def is_complete(self, token: int) -> bool:
        """Whether a sequence may end on `token` (a note, tempo or time signature is whole)."""
        return self.kind[token] in self.complete


# -- sampling --------------------------------------------------------------------------------


def choose(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    cfg: SampleConfig,
    penalized: Sequence[int],
    gen: torch.Generator,
) -> int:
    """One token from 1-D float logits: repetition penalty, grammar, temperature, top-k/p."""
    logits = logits.clone()
    if cfg.repetition_penalty != 1.0 and penalized:
        idx = torch.tensor(sorted(set(penalized)), dtype=torch.long)
        vals = logits[idx]
        logits[idx] = torch.where(
            vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty
        )
    logits[~allowed] = float("-inf")
    logits /= cfg.temperature
    if cfg.top_k and cfg.top_k < logits.numel():
        kth = torch.topk(logits, cfg.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p >= cfg.top_p  # keeps the first token always
        probs[order[drop]] = 0.0
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.inference_mode()
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

    Without the cache every step recomputes the last `context` tokens: the baseline the
    benchmark compares against (identical output while the sequence fits the context).
    """
    cfg = cfg or SampleConfig()
    check_vocab(model, tokenizer)
    if not 0 <= composer_id < model.config.n_composers:
        raise ValueError(f"composer id {composer_id} outside 0..{model.config.n_composers - 1}")
    grammar = RemiGrammar(tokenizer)
    device = next(model.parameters()).device
    bos, context = tokenizer.vocab["BOS_None"], model.config.context
    out = [t for t in (primer_ids or []) if grammar.kind[t] not in SPECIAL]
    for t in out:
        grammar.step(t)
    guided = cfg.guidance != 1.0 and composer_id != 0
    composers = torch.tensor([composer_id, 0] if guided else [composer_id], device=device)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.eval()

    seq = [bos, *out]
    feed, cache = seq, model.new_cache() if use_cache else None
    repairs = new = 0
    masked = 0.0
    t0 = time.perf_counter()
    for _ in range(cfg.max_tokens):
        if use_cache:
            x = torch.tensor(feed, device=device)[None].expand(len(composers), -1)
            logits, _ = model(x, composers, cache, last_only=True)
        else:
            win = seq[-context:]
            x = torch.tensor(win, device=device)[None].expand(len(composers), -1)
            logits, _ = model(x, composers, start_pos=len(seq) - len(win), last_only=True)
        last = logits[:, -1].float().cpu()
        z = last[1] + cfg.guidance * (last[0] - last[1]) if guided else last[0]
        allowed = grammar.allowed()
        if new < cfg.min_tokens:
            allowed[grammar.eos] = False
        repairs += int(not allowed[z.argmax()])
        masked += float(torch.softmax(z, -1)[~allowed].sum())
        recent = seq[-cfg.repetition_window :] if cfg.repetition_window else []
        penalized = [t for t in recent if grammar.kind[t] in grammar.pitch_kinds]
        token = choose(z, allowed, cfg, penalized, gen)
        new += 1
        if token == grammar.eos or (
            token == grammar.bar and cfg.max_bars and grammar.bars >= cfg.max_bars
        ):
            break
        grammar.step(token)
        seq.append(token)
        feed = [token]
    elapsed = time.perf_counter() - t0

    ids = seq[1:]
    trimmed = 0
    while ids and not grammar.is_complete(ids[-1]):  # an unfinished note would be lost
        ids.pop()
        trimmed += 1
    repairs += int(trimmed > 0)
    stats = {
        "tokens": new,
        "bars": sum(1 for t in ids if t == grammar.bar),
        "repairs": repairs,
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
