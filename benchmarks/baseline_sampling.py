"""Frozen copy of the sampler before issue 15 (per-token Python grammar, penalty and draw),
kept only so `bench_sampling.py` and `tests/test_sampling.py` can measure the new one
against it in the same run. Not used by the library.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

from midipipe.generator.gpt import GPT, check_vocab
from midipipe.generator.sampling import SPECIAL, Request, SampleConfig, finish_row

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

    def fresh(self) -> RemiGrammar:
        """A grammar at the start of a piece sharing this one's tables (cheap to build)."""
        other = copy.copy(self)
        other.reset()
        return other

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
    penalized: Sequence[Sequence[int]],
    gens: Sequence[torch.Generator],
) -> list[int]:
    """One token per row of float logits [B, V]: repetition penalty (on each row's
    `penalized` ids), grammar, temperature, top-k/p, then a draw from the row's generator."""
    logits = logits.clone()
    if cfg.repetition_penalty != 1.0:
        pen = torch.zeros_like(allowed)
        for row, ids in enumerate(penalized):
            pen[row, list(ids)] = True
        rp = cfg.repetition_penalty
        logits = torch.where(pen, torch.where(logits > 0, logits / rp, logits * rp), logits)
    logits[~allowed] = float("-inf")
    logits /= cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[1]:
        kth = torch.topk(logits, cfg.top_k, dim=1).values[:, -1:]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=1, descending=True)
        drop = sorted_p.cumsum(1) - sorted_p >= cfg.top_p  # keeps the first token always
        probs = probs.scatter(1, order, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.double().cumsum(1)
    u = torch.tensor([float(torch.rand(1, generator=g)) for g in gens], dtype=torch.double)
    picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    last = probs.shape[1] - 1 - (probs > 0).flip(1).int().argmax(1)  # rounding at u -> 1
    return torch.minimum(picks, last).tolist()


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
    base = RemiGrammar(tokenizer)
    primers = [[t for t in r.primer if base.kind[t] not in SPECIAL] for r in requests]
    if len({len(p) for p in primers}) > 1:
        raise ValueError("generate_batch: primers must have the same length")
    grammars = [base.fresh() for _ in requests]
    for g, p in zip(grammars, primers, strict=True):
        for t in p:
            g.step(t)
    device = next(model.parameters()).device
    bos, pad, context = tokenizer.vocab["BOS_None"], tokenizer.pad_token_id, model.config.context
    n = len(requests)
    ids = [r.composer_id for r in requests]
    guided = cfg.guidance != 1.0 and any(ids)
    pitches = base.pitch_kinds
    composers = torch.tensor(ids + [0] * n if guided else ids, device=device)
    gens = [torch.Generator().manual_seed(r.seed) for r in requests]
    model.eval()

    seqs = [[bos, *p] for p in primers]
    feed, cache = [list(s) for s in seqs], model.new_cache() if use_cache else None
    done = [False] * n
    new, repairs, masked, elapsed = [0] * n, [0] * n, [0.0] * n, [0.0] * n
    t0 = time.perf_counter()
    for _ in range(cfg.max_tokens):
        if use_cache:
            x = torch.tensor(feed, device=device)
            logits, _ = model(x.repeat(2, 1) if guided else x, composers, cache, last_only=True)
        else:
            win = [s[-context:] for s in seqs]
            x = torch.tensor(win, device=device)
            start = len(seqs[0]) - len(win[0])
            logits, _ = model(
                x.repeat(2, 1) if guided else x, composers, start_pos=start, last_only=True
            )
        last = logits[:, -1].float().cpu()
        z = last[n:] + cfg.guidance * (last[:n] - last[n:]) if guided else last
        live = [i for i in range(n) if not done[i]]
        allowed = torch.stack([grammars[i].allowed() for i in live])
        for row, i in enumerate(live):
            if new[i] < cfg.min_tokens:
                allowed[row, grammars[i].eos] = False
        z = z[live]
        wrong = ~allowed.gather(1, z.argmax(1, keepdim=True))[:, 0]
        off = torch.softmax(z, 1).masked_fill(allowed, 0.0).sum(1)
        penalized = [
            [t for t in seqs[i][-cfg.repetition_window :] if grammars[i].kind[t] in pitches]
            if cfg.repetition_window
            else []
            for i in live
        ]
        tokens = choose(z, allowed, cfg, penalized, [gens[i] for i in live])
        step = [pad] * n  # finished rows are fed PAD, so all rows stay in step
        for row, (i, token) in enumerate(zip(live, tokens, strict=True)):
            g = grammars[i]
            repairs[i] += int(wrong[row])
            masked[i] += float(off[row])
            new[i] += 1
            if token == g.eos or (token == g.bar and cfg.max_bars and g.bars >= cfg.max_bars):
                done[i], elapsed[i] = True, time.perf_counter() - t0
            else:
                g.step(token)
                step[i] = token
        for s, t in zip(seqs, step, strict=True):
            s.append(t)
        feed = [[t] for t in step]
        if all(done):
            break
    end = time.perf_counter() - t0
    return [
        finish_row(g, s, new[i], repairs[i], masked[i], elapsed[i] or end, bool(ids[i]) and guided)
        for i, (g, s) in enumerate(zip(grammars, seqs, strict=True))
    ]
