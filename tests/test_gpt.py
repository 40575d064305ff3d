"""The composer-conditioned GPT, its training windows, and grammar-safe CFG sampling."""

from __future__ import annotations

import dataclasses
import math

import pytest
import symusic
import torch

from midipipe.core.params import TrainParams
from midipipe.generator import windows as gd
from midipipe.generator.gpt import (
    GPT,
    GPTConfig,
    check_vocab,
    load_model,
    rope_angles,
    save_model,
)
from midipipe.generator.sampling import (
    GrammarState,
    RemiGrammar,
    Request,
    SampleConfig,
    generate,
    generate_batch,
    to_midi,
)
from midipipe.tokens.remi import encode
from midipipe.training.fit import Fit, fit
from tests.conftest import build_midi

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> GPTConfig:
    base = dict(
        vocab_size=40,
        n_layer=2,
        n_head=2,
        d_model=32,
        d_ff=64,
        context=16,
        n_composers=4,
        dropout=0.0,
    )
    return GPTConfig(**{**base, **kw})


def model_for(tokenizer, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(vocab_size=len(tokenizer.vocab), context=64, **kw)).eval()


# -- config ----------------------------------------------------------------------------------


def test_profiles_and_config_round_trip():
    gpu, cpu = GPTConfig.gpu_profile(), GPTConfig.cpu_default(vocab_size=530, n_composers=7)
    assert (gpu.n_layer, gpu.n_head, gpu.d_model, gpu.d_ff, gpu.context) == (8, 8, 512, 2048, 8192)
    assert cpu.context == 512 and cpu.vocab_size == 530 and cpu.n_composers == 7
    assert GPTConfig.from_dict(cpu.to_dict()) == cpu
    with pytest.raises(ValueError, match="unknown GPTConfig keys"):
        GPTConfig.from_dict({**cpu.to_dict(), "n_embd": 3})
    with pytest.raises(ValueError, match="heads of even size"):
        tiny(d_model=30, n_head=4)


# -- model -----------------------------------------------------------------------------------


def test_shapes_and_causality():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    ids = torch.randint(4, 40, (3, 12))
    logits, cache = model(ids, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 12, 40) and cache is None
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 40
    logits2, _ = model(changed, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(logits[:, :8], logits2[:, :8], atol=0, rtol=0)
    assert not torch.allclose(logits[:, 8:], logits2[:, 8:])


def test_kv_cache_matches_full_forward():
    """Token by token, in chunks, and past the context (a sliding window of keys)."""
    torch.manual_seed(0)
    model = GPT(tiny(context=16)).eval()
    ids = torch.randint(4, 40, (2, 40))
    composer = torch.tensor([1, 3])
    with torch.no_grad():
        full, _ = model(ids, composer)
        cache = model.new_cache()
        parts = [model(ids[:, :5], composer, cache)[0]]
        parts += [model(ids[:, i : i + 1], composer, cache)[0] for i in range(5, 30)]
        parts.append(model(ids[:, 30:], composer, cache)[0])
    assert cache.pos == 40
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("condition", ["input", "every_layer"])
def test_decode_step_is_the_cached_forward_bit_for_bit(rows, condition):
    """Past the context too (a sliding window of keys); one row reads q per head as a view
    of the projection, more rows as a copy; with the composer's FiLM at every layer (random,
    as if trained) too, which one row applies inside its layer norms."""
    torch.manual_seed(0)
    model = GPT(tiny(context=16, condition=condition)).eval()
    if condition == "every_layer":
        torch.nn.init.normal_(model.film.weight, std=0.3)
    ids = torch.randint(4, 40, (3, 40))[:rows]
    composer = torch.tensor([1, 3, 0])[:rows]
    with torch.inference_mode():
        a, b = model.new_cache(), model.new_cache()
        model(ids[:, :4], composer, a)
        model(ids[:, :4], composer, b)
        for i in range(4, 40):
            ref, _ = model(ids[:, i : i + 1], composer, a, last_only=True)
            out = model.decode_step(ids[:, i : i + 1], composer, b)
            torch.testing.assert_close(out, ref[:, -1], atol=1e-5, rtol=1e-5)
    assert a.pos == b.pos == 40


def test_every_layer_conditioning_starts_as_input():
    """The per-layer FiLM is zero at init (the same function as `input`); once trained
    (random here) it moves the logits by composer, and gradient checkpointing still
    matches (`decode_step`: the test above)."""
    torch.manual_seed(0)
    plain = GPT(tiny(context=16)).eval()
    film = GPT(tiny(context=16, condition="every_layer")).eval()
    film.load_state_dict({**film.state_dict(), **plain.state_dict()})
    ids, composer = torch.randint(4, 40, (3, 30)), torch.tensor([1, 3, 0])
    with torch.no_grad():
        torch.testing.assert_close(film(ids, composer)[0], plain(ids, composer)[0])
        film.film.weight.normal_(std=0.3)
        moved = film(ids, composer)[0]
        assert (moved - plain(ids, composer)[0]).abs().max() > 1e-2
    ckpt = GPT(tiny(context=16, condition="every_layer", grad_checkpointing=True))
    ckpt.load_state_dict(film.state_dict())
    for model in (film, ckpt):
        model.train()
        model(ids, composer)[0].square().mean().backward()
    torch.testing.assert_close(film.film.weight.grad, ckpt.film.weight.grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="condition must be one of"):
        tiny(condition="adaln")


def test_forward_and_decode_step_take_turns_on_one_cache():
    """The module forward continues where decode_step left off (its ring of keys written
    back in order) and the other way round, before and past the context."""
    torch.manual_seed(0)
    model = GPT(tiny(context=16)).eval()
    ids = torch.randint(4, 40, (2, 60))
    composer = torch.tensor([1, 3])
    with torch.inference_mode():
        ref_cache = model.new_cache()
        ref = [model(ids[:, :3], composer, ref_cache)[0][:, -1]]
        ref += [model(ids[:, i : i + 1], composer, ref_cache)[0][:, -1] for i in range(3, 60)]
        cache = model.new_cache()
        out = [model(ids[:, :3], composer, cache)[0][:, -1]]
        i = 3
        for n_decode, n_forward in ((5, 2), (20, 3), (9, 1), (16, 1)):
            for _ in range(n_decode):
                out.append(model.decode_step(ids[:, i : i + 1], composer, cache))
                i += 1
            logits, _ = model(ids[:, i : i + n_forward], composer, cache)
            out += list(logits.unbind(1))
            i += n_forward
    assert i == 60 and cache.pos == 60
    torch.testing.assert_close(torch.stack(out, 1), torch.stack(ref, 1), atol=1e-5, rtol=1e-5)


def test_decode_step_under_bf16_autocast():
    """What CUDA sampling runs (`inference_precision`), here on CPU's autocast: mixed bf16 /
    float32 operands (in-place ops are not autocast) and the module forward's bf16 cache."""
    torch.manual_seed(0)
    model = GPT(tiny(context=8)).eval()
    ids, composer = torch.randint(4, 40, (2, 12)), torch.tensor([1, 2])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = model(ids, composer)
        cache = model.new_cache()
        model(ids[:, :3], composer, cache)
        out = [model.decode_step(ids[:, i : i + 1], composer, cache) for i in range(3, 12)]
    torch.testing.assert_close(
        torch.stack(out, 1).float(), ref[:, 3:].float(), atol=0.05, rtol=0.05
    )


def test_decode_step_reads_the_weights_its_cache_was_started_with():
    """The rearranged weights belong to a cache: a new cache after the weights changed (a
    training step between two sampling runs) decodes with the new ones."""
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    ids, composer = torch.randint(4, 40, (2, 6)), torch.tensor([1, 2])
    with torch.inference_mode():
        model.decode_step(ids[:, :1], composer, model.new_cache())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with torch.inference_mode():
        ref, _ = model(ids, composer)
        cache = model.new_cache()
        out = [model.decode_step(ids[:, i : i + 1], composer, cache) for i in range(6)]
    torch.testing.assert_close(torch.stack(out, 1), ref, atol=1e-5, rtol=1e-5)


def test_rope_table_is_the_angles_and_serves_training_after_sampling():
    model = GPT(tiny(context=8))
    for start, t in ((0, 8), (5, 1), (40, 3)):  # the last one grows the table
        cos, sin = model.rope(start, t, torch.device("cpu"))
        ref = rope_angles(torch.arange(start, start + t), 16, model.config.rope_base)
        assert torch.equal(cos, ref[0]) and torch.equal(sin, ref[1])
    fresh = GPT(tiny(context=8))
    with torch.inference_mode():  # the table is first built while sampling
        fresh(torch.ones(1, 4, dtype=torch.long), 1)
    logits, _ = fresh(torch.ones(2, 8, dtype=torch.long), 1)
    logits.sum().backward()  # would fail on an inference tensor


def test_weight_tying():
    model = GPT(tiny())
    keys = set(model.state_dict())
    assert "tok.weight" in keys and not any("head" in k for k in keys)
    logits, _ = model(torch.tensor([[5, 6]]), 1)
    logits[0, -1, 33].backward()  # token 33 is not an input: its grad comes from the head
    assert model.tok.weight.grad[33].abs().sum() > 0
    x = model.ln_f(torch.randn(3, 32))
    expected = x @ model.tok.weight.T * 32**-0.5
    torch.testing.assert_close(torch.nn.functional.linear(x, model.tok.weight) * 32**-0.5, expected)


def test_composer_embedding_changes_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    ids = torch.randint(4, 40, (1, 10))
    a, b = model(ids, 1)[0], model(ids, 2)[0]
    assert (a - b).abs().max() > 1e-3
    off = GPT(tiny(composer_scale=0.0)).eval()
    torch.testing.assert_close(off(ids, 1)[0], off(ids, 2)[0])


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    plain = GPT(tiny())
    ckpt = GPT(tiny(grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    ids = torch.randint(4, 40, (2, 12))
    for model in (plain, ckpt):
        model.train()
        model(ids, torch.tensor([1, 2]))[0].square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_cfg_batch_equals_two_forwards():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    ids = torch.randint(4, 40, (1, 9))
    with torch.no_grad():
        both, _ = model(ids.expand(2, -1), torch.tensor([3, 0]))
        cond, uncond = model(ids, 3)[0], model(ids, 0)[0]
    torch.testing.assert_close(both[0], cond[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], uncond[0], atol=1e-5, rtol=0)


def test_save_load_round_trip_and_vocab_check(tmp_path, tokenizer):
    model = model_for(tokenizer)
    save_model(model, tmp_path / "gpt")
    loaded = load_model(tmp_path / "gpt", tokenizer)
    assert loaded.config == model.config and not loaded.training
    ids = torch.randint(4, 500, (1, 7))
    torch.testing.assert_close(loaded(ids, 1)[0], model(ids, 1)[0], atol=0, rtol=0)

    other = GPT(tiny(vocab_size=518))
    save_model(other, tmp_path / "old")
    with pytest.raises(
        ValueError, match=f"checkpoint vocabulary 518 tokens, tokenizer {len(tokenizer.vocab)}"
    ):
        load_model(tmp_path / "old", tokenizer)
    with pytest.raises(ValueError, match="vocabulary"):
        check_vocab(other, tokenizer)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


# -- training data ---------------------------------------------------------------------------


WIN = gd.WindowConfig(context=8, composer_dropout=0.6, token_dropout=0.0)


def test_windows_bos_eos_pad():
    piece = list(range(10, 20))  # BOS + 10 ids + EOS = 12 tokens
    assert gd.window(piece, 0, WIN).tolist() == [1, *range(10, 18)]
    assert gd.window(piece, 3, WIN).tolist() == [*range(12, 20), 2]
    short = gd.window([10, 11, 12], 0, WIN).tolist()
    assert short == [1, 10, 11, 12, 2, 0, 0, 0, 0]
    eval_targets = [t for w in gd.eval_windows(piece, WIN) for t in w[1:] if t != 0]
    assert eval_targets == [*piece, 2]  # every target exactly once


def test_train_batches_are_deterministic_and_drop_composers():
    pieces = [list(range(5, 5 + n)) for n in (3, 20, 40, 7)]
    composers = [1, 2, 3, 2]
    cfg = dataclasses.replace(WIN, token_dropout=0.05)

    def draw(seed: int, epochs: int) -> list[dict]:
        rng = torch.Generator().manual_seed(seed)
        return [
            b for e in range(epochs) for b in gd.train_batches(pieces, composers, cfg, 4, e, rng)
        ]

    a, b = draw(0, 200), draw(0, 200)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    assert len(a) == 200 * gd.steps_per_epoch(pieces, cfg, 4)
    first = a[0]
    assert first["inputs"].shape == first["targets"].shape and first["inputs"].shape[1] <= 8

    comp = torch.cat([x["composer"] for x in a])
    assert abs((comp == 0).float().mean().item() - 0.6) < 0.04
    real = torch.cat([(x["targets"][:, :-1] != 0).flatten() for x in a])
    dropped = torch.cat(
        [((x["inputs"][:, 1:] == 0) & (x["targets"][:, :-1] != 0)).flatten() for x in a]
    )
    assert abs(dropped.sum().item() / real.sum().item() - 0.05) < 0.01
    assert not torch.equal(a[0]["inputs"], draw(1, 1)[0]["inputs"])


@pytest.mark.parametrize("start_frac", [0.0, 1.0])
def test_openings_are_drawn_per_piece_other_windows_by_length(start_frac):
    # piece 0 fills 20 windows of 9 tokens, pieces 1-4 one each
    pieces = [list(range(5, 5 + 178)), *([list(range(5, 10))] * 4)]
    cfg = dataclasses.replace(WIN, composer_dropout=0.0, start_frac=start_frac)
    rng = torch.Generator().manual_seed(0)
    batches = [
        b for e in range(300) for b in gd.train_batches(pieces, [1, 2, 2, 2, 2], cfg, 8, e, rng)
    ]
    long_share = torch.cat([b["composer"] for b in batches]).eq(1).float().mean().item()
    assert abs(long_share - (1 / 5 if start_frac else 20 / 24)) < 0.02
    if start_frac:
        assert all((b["inputs"][:, 0] == WIN.bos_id).all() for b in batches)


def test_loss_ignores_pad_targets():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    padded = {
        "inputs": torch.tensor([[1, 7, 8, 2, 0, 0]]),
        "targets": torch.tensor([[7, 8, 2, 0, 0, 0]]),
        "composer": torch.tensor([1]),
    }
    short = {
        "inputs": torch.tensor([[1, 7, 8]]),
        "targets": torch.tensor([[7, 8, 2]]),
        "composer": torch.tensor([1]),
    }
    a, logs = gd.loss(model, padded, label_smoothing=0.0)
    b, _ = gd.loss(model, short, label_smoothing=0.0)
    torch.testing.assert_close(a, b)
    assert logs["nll"] == pytest.approx(a.item(), rel=1e-5)


def overfit_one_sequence(steps: int) -> float:
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=40, context=32))
    seq = torch.randint(4, 40, (1, 33))
    batch = {"inputs": seq[:, :-1], "targets": seq[:, 1:], "composer": torch.tensor([1])}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, logs = gd.loss(model, batch, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logs["nll"]


def test_overfits_one_sequence():
    assert overfit_one_sequence(300) < 0.1  # from ln(40) = 3.7


def test_overfits_one_sequence_quickly():
    """100 steps take the NLL to ~0.53; with embeddings at std d_model**-0.5 the tied, scaled
    head cannot yet be that confident (~1.09): the CPU budget went on growing them."""
    assert overfit_one_sequence(100) < 0.8


def test_initial_loss_is_near_uniform():
    """Tied, d**-0.5-scaled logits start near uniform: loss ~ ln(vocab), not ~ sqrt(d_model)."""
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=500, d_model=128, n_head=4, context=32)).eval()
    seq = torch.randint(4, 500, (4, 33))
    batch = {"inputs": seq[:, :-1], "targets": seq[:, 1:], "composer": torch.tensor([1] * 4)}
    loss, _ = gd.loss(model, batch, label_smoothing=0.0)
    assert abs(loss.item() - math.log(500)) < 0.2


def test_fit_runs_with_these_batches(tmp_path):
    """The pieces plug into training.fit: two epochs, valid metrics, best weights saved."""
    pieces = [list(range(5, 5 + n)) for n in (12, 30, 9, 25)]
    composers = [1, 2, 3, 1]
    cfg = gd.WindowConfig(context=16)
    torch.manual_seed(0)
    job = Fit(
        model=GPT(tiny(context=16)),
        train_batches=lambda epoch, rng: gd.train_batches(pieces, composers, cfg, 2, epoch, rng),
        steps_per_epoch=gd.steps_per_epoch(pieces, cfg, 2),
        loss=gd.loss,
        evaluate=lambda m: gd.evaluate(m, pieces[:2], composers[:2], cfg, batch_size=2),
    )
    saved = []
    fit(
        job,
        TrainParams(epochs=2, lr=1e-3, device="cpu", precision="fp32"),
        tmp_path / "resume",
        save_best=lambda m: save_model(m, tmp_path / "out") or saved.append(1),
        fingerprint={"test": 1},
    )
    assert saved and len(job.history) == 2
    assert {"valid_loss", "valid_ppl", "train_nll"} <= set(job.history[0])
    assert job.history[1]["valid_loss"] < job.history[0]["valid_loss"]


# -- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_samples_from_random_weights_always_decode(tmp_path, tokenizer, seed):
    model = model_for(tokenizer, n_composers=3)
    cfg = SampleConfig(max_tokens=200, seed=seed, guidance=2.0, top_p=1.0, temperature=1.5)
    ids, stats = generate(model, tokenizer, 2, cfg=cfg)
    assert ids and stats["tokens"] <= 200 and stats["guided"]
    assert tokenizer.tokens_errors(ids) == 0
    path = to_midi(tokenizer, ids, tmp_path / "out.mid")
    assert symusic.Score(path).note_num() == tokenizer.decode(ids).note_num()
    assert path.with_suffix(".json").exists()
    assert stats["bars"] == ids.count(tokenizer.vocab["Bar_None"])


def test_primer_and_max_bars(tokenizer):
    model = model_for(tokenizer)
    primer, bars = encode(tokenizer, symusic.Score.from_midi(build_midi(n_bars=2)))
    cfg = SampleConfig(max_tokens=300, max_bars=4, seed=3, top_p=1.0, temperature=2.0)
    ids, stats = generate(model, tokenizer, 1, primer_ids=[1, *primer.tolist()], cfg=cfg)
    assert ids[: len(primer)] == primer.tolist()
    assert stats["bars"] <= 4
    assert tokenizer.tokens_errors(ids) == 0


def test_cache_and_no_cache_sample_the_same(tokenizer):
    model = model_for(tokenizer)
    cfg = SampleConfig(max_tokens=40, seed=7)
    a, _ = generate(model, tokenizer, 3, cfg=cfg)
    b, stats = generate(model, tokenizer, 3, cfg=cfg, use_cache=False)
    assert a == b and stats["tokens"] == 40


def test_a_batch_samples_what_each_row_would_alone(tokenizer):
    model = model_for(tokenizer)
    cfg = SampleConfig(max_tokens=48, guidance=2.0, top_k=30, repetition_penalty=1.1)
    requests = [Request(1, (), 5), Request(0, (), 6), Request(3, (), 7)]
    batch = generate_batch(model, tokenizer, requests, cfg)
    for r, (ids, stats) in zip(requests, batch, strict=True):
        alone = generate(model, tokenizer, r.composer_id, cfg=dataclasses.replace(cfg, seed=r.seed))
        assert ids == alone[0] and stats["guided"] == (r.composer_id != 0)
        assert tokenizer.tokens_errors(ids) == 0
    with pytest.raises(ValueError, match="same length"):
        generate_batch(model, tokenizer, [Request(1, (), 0), Request(1, (4, 5), 0)], cfg)


def test_grammar_rules(tokenizer):
    g, v = RemiGrammar(tokenizer), tokenizer.vocab
    state = GrammarState(g, 1, torch.device("cpu"))

    def step(*tokens: str) -> None:
        for token in tokens:
            state.step(torch.tensor([v[token]]))

    def allowed_kinds() -> set[str]:
        return {g.kind[i] for i in state.allowed()[0].nonzero().flatten().tolist()}

    assert allowed_kinds() == {"Bar"}
    step("Bar_None", "TimeSig_3/4", "Position_8", "Program_-1")
    assert allowed_kinds() == {"PitchDrum"}
    step("PitchDrum_40", "Velocity_63", "Duration_1.0.8", "Program_-1")
    assert not state.allowed()[0, v["PitchDrum_40"]]  # no note twice at one position
    step("PitchDrum_41", "Velocity_63", "Duration_1.0.8")
    allowed = state.allowed()[0]
    assert allowed[v["EOS_None"]] and allowed[v["Bar_None"]] and not allowed[v["TimeSig_4/4"]]
    positions = {
        int(tokenizer[i].split("_")[1])
        for i in allowed.nonzero().flatten().tolist()
        if tokenizer[i].startswith("Position")
    }
    assert positions == set(range(9, 24))  # forward, inside a 3/4 bar of 24 positions


def test_sample_config_validation():
    with pytest.raises(ValueError, match=r"guidance must be >= 1"):
        SampleConfig(guidance=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            SampleConfig(top_p=bad)
    with pytest.raises(ValueError, match="temperature"):
        SampleConfig(temperature=0)


def test_generate_rejects_unknown_composer(tokenizer):
    with pytest.raises(ValueError, match="composer id 9 outside 0..3"):
        generate(model_for(tokenizer), tokenizer, 9, cfg=SampleConfig(max_tokens=2))
