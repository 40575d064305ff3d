"""The tensor sampler against the per-token sampler it replaced (`benchmarks/baseline_sampling`):
same tokens for the same seeds, and the same grammar masks on random walks."""

from __future__ import annotations

import dataclasses

import pytest
import symusic
import torch

from benchmarks import baseline_sampling as old
from midipipe.generator.sampling import (
    GrammarState,
    RemiGrammar,
    Request,
    SampleConfig,
    generate_batch,
    nucleus,
)
from midipipe.tokens.remi import encode
from tests.conftest import build_midi, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIGS = {
    "plain": SampleConfig(max_tokens=120, guidance=1.0, top_p=0.95),
    "guided": SampleConfig(max_tokens=120, guidance=2.5, top_p=0.9, temperature=1.3),
    "topk-penalty": SampleConfig(
        max_tokens=120, guidance=2.0, top_k=30, top_p=1.0, repetition_penalty=1.3
    ),
    "bars-min": SampleConfig(max_tokens=150, min_tokens=40, max_bars=3, temperature=2.0),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("rows", [1, 4])
def test_same_tokens_as_the_per_token_sampler(tokenizer, name, rows):
    model, cfg = tiny_model(tokenizer), CONFIGS[name]
    requests = [Request(1 + i % 3 if i != 2 else 0, (), 11 * i + 3) for i in range(rows)]
    new = generate_batch(model, tokenizer, requests, cfg)
    ref = old.generate_batch(model, tokenizer, requests, cfg)
    for (ids, stats), (ref_ids, ref_stats) in zip(new, ref, strict=True):
        assert ids == ref_ids
        keys = ("tokens", "bars", "repairs", "trimmed", "masked_mass", "guided")
        assert {k: stats[k] for k in keys} == {k: ref_stats[k] for k in keys}
        assert tokenizer.tokens_errors(ids) == 0


def test_same_tokens_with_a_primer_past_the_context(tokenizer):
    """A primer, the sliding KV window (context 32 < 140 tokens) and the no-cache path."""
    model = tiny_model(tokenizer, context=32)
    primer, _ = encode(tokenizer, symusic.Score.from_midi(build_midi(n_bars=2)))
    primer = primer.tolist()
    cfg = SampleConfig(max_tokens=100, guidance=1.5, repetition_penalty=1.2, min_tokens=100)
    requests = [Request(c, primer, s) for c, s in ((1, 0), (2, 9))]
    for use_cache in (True, False):
        new = generate_batch(model, tokenizer, requests, cfg, use_cache)
        ref = old.generate_batch(model, tokenizer, requests, cfg, use_cache)
        assert [ids for ids, _ in new] == [ids for ids, _ in ref]
        assert all(ids[: len(primer)] == primer for ids, _ in new)


def test_grammar_table_matches_the_per_token_grammar_on_random_walks(tokenizer):
    """Many grammar states: rows walk the grammar by uniform draws among the allowed tokens
    (so every kind, time signature, program and position gets visited), and at each step the
    table's masks must equal the per-token grammar's."""
    rows, steps = 24, 400
    grammar = RemiGrammar(tokenizer)
    state = GrammarState(grammar, rows, torch.device("cpu"))
    refs = [old.RemiGrammar(tokenizer) for _ in range(rows)]
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(steps):
        mask = state.allowed()
        ref = torch.stack([r.allowed() for r in refs])
        assert torch.equal(mask, ref)
        weights = mask.float()
        weights[:, grammar.eos] = 0.0  # keep walking
        weights[weights.sum(1) == 0, grammar.bar] = 1.0
        tokens = torch.multinomial(weights, 1, generator=gen)[:, 0]
        state.step(tokens)
        for r, t in zip(refs, tokens.tolist(), strict=True):
            r.step(t)
            seen.add(grammar.kind[t])
    assert {"Bar", "TimeSig", "Position", "Pitch", "Velocity", "Duration"} <= seen
    assert state.bars.tolist() == [r.bars for r in refs]


def test_finished_rows_stay_put(tokenizer):
    """A row that stops early is fed PAD and its grammar no longer moves."""
    grammar = RemiGrammar(tokenizer)
    v = tokenizer.vocab
    state = GrammarState(grammar, 2, torch.device("cpu"))
    state.step(torch.tensor([v["Bar_None"], v["PAD_None"]]))
    assert state.bars.tolist() == [1, 0]
    assert state.allowed()[1].nonzero().flatten().tolist() == [v["Bar_None"]]


def test_batch_rows_match_single_rows(tokenizer):
    model = tiny_model(tokenizer)
    cfg = SampleConfig(max_tokens=60, guidance=2.0, top_k=20)
    requests = [Request(1, (), 5), Request(0, (), 6), Request(3, (), 7)]
    batch = generate_batch(model, tokenizer, requests, cfg)
    for r, (ids, _) in zip(requests, batch, strict=True):
        alone = generate_batch(model, tokenizer, [r], dataclasses.replace(cfg))
        assert ids == alone[0][0]


@pytest.mark.parametrize("top_p", [0.5, 0.95, 1.0 - 1e-7])
def test_nucleus_from_candidates_is_the_nucleus_of_a_full_sort(top_p):
    """Peaked rows (nucleus within the candidates) and flat ones (past them, sorted whole)."""
    gen = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.01, 0.3, 1.0, 3.0, 8.0, 30.0]).repeat_interleave(4)[:, None]
    logits = torch.randn(len(spread), 533, generator=gen) * spread
    logits[::5, 200:] = float("-inf")
    probs = torch.softmax(logits, 1)
    sorted_p, order = probs.sort(dim=1, descending=True)
    drop = sorted_p.cumsum(1) - sorted_p >= top_p
    ref = probs.scatter(1, order, sorted_p.masked_fill(drop, 0.0))
    sizes = (ref > 0).sum(1)
    assert sizes.min() < 16 and sizes.max() > 16  # both kinds of rows
    assert torch.equal(nucleus(probs, top_p, 16), ref)


def test_grammar_index_sums_without_integer_matmul():
    """CUDA has no integer matmul: the broadcast sum used there gives the same indexes."""
    from midipipe.generator.sampling import _sum_fields

    g = torch.Generator().manual_seed(0)
    fields = torch.randint(0, 1000, (5, 9), generator=g)
    sums = torch.randint(0, 2, (9, 4), generator=g)
    out = torch.empty(5, 4, dtype=torch.long)
    _sum_fields(fields, sums, out=out)
    assert torch.equal(out, torch.mm(fields, sums))
