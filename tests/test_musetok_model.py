"""MuseTok model: parity with the reference vectors (MIDIPIPE_MUSETOK_VECTORS) and self-contained
checks of config, training pass, row building and checkpoints."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from midipipe.musetok import checkpoint
from midipipe.musetok.encode import bar_rows, decoder_sample, encode_pieces, segment_rows
from midipipe.musetok.model import MuseTok, MuseTokConfig

TOL = 1e-5
VECTORS_ENV = "MIDIPIPE_MUSETOK_VECTORS"


def tiny_config(**kw) -> MuseTokConfig:
    sizes = dict(
        enc_n_layer=1,
        enc_n_head=2,
        enc_d_model=16,
        enc_d_ff=32,
        dec_n_layer=1,
        dec_n_head=2,
        dec_d_model=16,
        dec_d_ff=32,
        d_latent=8,
        d_embed=16,
        num_quantizers=3,
        codebook_size=16,
        max_pos=2048,
    )
    sizes.update(kw)
    return MuseTokConfig(**sizes)


def random_piece(rng: np.random.Generator, n_bars: int, max_len: int = 60) -> tuple[list, list]:
    """Token ids shaped like a piece: each bar starts with Bar_None (0), then random events."""
    ids: list[int] = []
    starts: list[int] = []
    for _ in range(n_bars):
        starts.append(len(ids))
        ids += [0] + rng.integers(1, 167, size=int(rng.integers(1, max_len))).tolist()
    return ids + [54], starts


# -- shared reference data ----------------------------------------------------------------------


def _vectors_dir() -> Path | None:
    import os

    value = os.environ.get(VECTORS_ENV)
    return Path(value) if value and Path(value).is_dir() else None


def _expected_names() -> list[str]:
    root = _vectors_dir()
    if root is None:
        return ["(no vectors)"]
    return sorted(p.stem for p in (root / "expected").glob("*.safetensors"))


@cache
def _reference_model(root: Path, variant: str = "model") -> MuseTok:
    cfg = MuseTokConfig.from_dict(json.loads((root / "model" / "config.json").read_text()))
    state = load_file(str(root / "model" / "model.safetensors"))
    if variant == "scaled":
        pe = state["pe.pe"]
        state = load_file(str(root / "variant_scaled" / "model_without_pe.safetensors"))
        state["pe.pe"] = pe
    model = MuseTok(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _events(root: Path, name: str) -> tuple[list[int], list[int]]:
    ev = json.loads((root / "events" / f"{name}.json").read_text())
    return ev["ids"], ev["bar_positions"]


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def test_strict_load_and_config(musetok_vectors):
    cfg_json = json.loads((musetok_vectors / "model" / "config.json").read_text())
    cfg = MuseTokConfig.from_dict(cfg_json)
    assert (cfg.d_latent, cfg.num_quantizers, cfg.codebook_size) == (32, 4, 64)
    model = MuseTok(cfg)
    state = load_file(str(musetok_vectors / "model" / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    assert len(state) == cfg_json["state_dict_keys"]
    assert sum(p.numel() for p in model.parameters()) == cfg_json["n_parameters"]
    # the checkpoint loader reads the vectors' config.json layout too
    loaded = checkpoint.load(musetok_vectors / "model")
    assert not loaded.training
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_seeded_init_reproduces_reference_weights(musetok_vectors):
    """Same registration order and init as the reference: seed 1234 gives its weights."""
    cfg = MuseTokConfig.from_dict(
        json.loads((musetok_vectors / "model" / "config.json").read_text())
    )
    state = load_file(str(musetok_vectors / "model" / "model.safetensors"))
    torch.manual_seed(1234)
    fresh = MuseTok(cfg).state_dict()
    for key, value in state.items():
        if key != "pe.pe":
            assert torch.equal(fresh[key], value), key
    # The sinusoid depends on the CPU's vectorised sin/cos (about 1e-3 at position 20000).
    assert _maxdiff(fresh["pe.pe"][: cfg.dec_seqlen], state["pe.pe"][: cfg.dec_seqlen]) < 1e-4
    assert _maxdiff(fresh["pe.pe"], state["pe.pe"]) < 5e-3


@pytest.mark.parametrize("name", _expected_names())
def test_encoder_parity(musetok_vectors, name):
    model = _reference_model(musetok_vectors)
    exp = load_file(str(musetok_vectors / "expected" / f"{name}.safetensors"))
    ids, starts = _events(musetok_vectors, name)
    seg = segment_rows(ids, starts, 0)
    assert torch.equal(torch.from_numpy(seg.ids), exp["encoder_input_ids"])
    assert torch.equal(torch.from_numpy(seg.pad_mask), exp["encoder_padding_mask"])

    rows = bar_rows(ids, starts)
    with torch.inference_mode():
        out = model.encode_bars(torch.from_numpy(rows.ids), torch.from_numpy(rows.pad_mask))
        from_codes = model.latents_from_codes(out.codes)
    assert torch.equal(out.codes, exp["codes"])
    for key, value in (
        ("encoder_out", out.encoder_out),
        ("quantizer_input", out.quantizer_input),
        ("latents", out.latents),
        ("latents_from_codes", from_codes),
    ):
        assert _maxdiff(value, exp[key]) <= TOL, key


@pytest.mark.parametrize("name", _expected_names())
def test_decoder_parity(musetok_vectors, name):
    model = _reference_model(musetok_vectors)
    exp = load_file(str(musetok_vectors / "expected" / f"{name}.safetensors"))
    ids, starts = _events(musetok_vectors, name)
    sample = decoder_sample(ids, starts)
    n_real = exp["decoder_input_ids"].numel()
    assert sample.length == n_real
    assert torch.equal(torch.from_numpy(sample.dec_input[:n_real]), exp["decoder_input_ids"])
    assert torch.equal(torch.from_numpy(sample.bar_pos), exp["decoder_bar_positions"])
    assert torch.equal(torch.from_numpy(sample.enc.ids), exp["encoder_input_ids"])
    assert torch.equal(torch.from_numpy(sample.enc.pad_mask), exp["encoder_padding_mask"])

    dec_inp = torch.from_numpy(sample.dec_input)[None]
    bar_pos = torch.from_numpy(sample.bar_pos)[None]
    with torch.inference_mode():
        out = model(
            torch.from_numpy(sample.enc.ids)[None],
            torch.from_numpy(sample.enc.pad_mask)[None],
            dec_inp,
            bar_pos,
        )
        from_latents = model.decode(exp["decoder_latents"][None], dec_inp, bar_pos)
    n_bars = min(len(starts), 16)
    assert torch.equal(out.codes[0, :n_bars], exp["codes"][:n_bars])
    assert _maxdiff(out.logits[0, :n_real], exp["decoder_logits"]) <= TOL
    assert _maxdiff(from_latents[0, :n_real], exp["decoder_logits"]) <= TOL


@pytest.mark.parametrize("name", _expected_names())
def test_variant_scaled_parity(musetok_vectors, name):
    path = musetok_vectors / "variant_scaled" / "expected" / f"{name}.safetensors"
    if not path.exists():
        pytest.skip("no variant_scaled vectors")
    model = _reference_model(musetok_vectors, "scaled")
    exp = load_file(str(path))
    rows = bar_rows(*_events(musetok_vectors, name))
    with torch.inference_mode():
        out = model.encode_bars(torch.from_numpy(rows.ids), torch.from_numpy(rows.pad_mask))
    assert torch.equal(out.codes, exp["codes"])
    assert _maxdiff(out.latents, exp["latents"]) <= TOL
    assert _maxdiff(out.quantizer_input, exp["quantizer_input"]) <= TOL


def test_official_config_matches_full_model_keys(musetok_vectors):
    ref = json.loads((musetok_vectors / "full_model_keys.json").read_text())
    cfg = MuseTokConfig.official()
    assert cfg == MuseTokConfig.from_dict(ref["constructor_args"]) == MuseTokConfig.large()
    with torch.device("meta"):
        model = MuseTok(cfg)
    state = model.state_dict()
    got = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in state.items()
    }
    want = {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in ref["keys"].items()}
    assert list(got) == list(want)
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == ref["n_parameters"]
    assert sum(b.numel() for b in model.buffers()) == ref["n_buffer_elements"]


def test_batching_across_pieces_matches_per_piece(musetok_vectors):
    model = _reference_model(musetok_vectors, "scaled")  # diverse codes
    pieces = [_events(musetok_vectors, n) for n in _expected_names()[::3]]
    per_piece = []
    for ids, starts in pieces:
        rows = bar_rows(ids, starts)
        with torch.inference_mode():
            per_piece.append(
                model.encode_bars(torch.from_numpy(rows.ids), torch.from_numpy(rows.pad_mask))
            )
    # full 128-token rows: the reference path; trimmed rows (the fast default) change only the
    # float summation order, which the x10 weights of this variant amplify to ~1e-5
    # packing (bars bucketed by length, the default) changes the same order only
    for batch_size, trim, pack, atol in (
        (37, False, False, 1e-6),
        (256, False, False, 1e-6),
        (256, False, True, 1e-6),
        (256, True, False, 5e-5),
        (256, True, True, 5e-5),
    ):
        results = list(encode_pieces(model, pieces, batch_size, trim=trim, pack=pack))
        assert len(results) == len(pieces)
        for res, ref, (_, starts) in zip(results, per_piece, pieces, strict=True):
            assert res.codes.shape == (len(starts), 4)
            np.testing.assert_array_equal(res.codes, ref.codes.numpy())
            np.testing.assert_allclose(res.latents, ref.latents.numpy(), rtol=0, atol=atol)
            np.testing.assert_allclose(res.encoder_out, ref.encoder_out.numpy(), rtol=0, atol=atol)


def test_truncated_bar_count(musetok_vectors):
    counts = {n: bar_rows(*_events(musetok_vectors, n)).n_truncated for n in _expected_names()}
    # README: bars longer than 128 tokens, truncated in the encoder input
    assert {n: c for n, c in counts.items() if c} == {
        "pop909_241": 6,
        "pop909_321": 1,
        "vgmidi_ZeldaMajorasMask_ChaseTheme": 2,
        "miditok_Maestro_3": 4,
        "miditok_multitrack_d6caebd1964d9e4a3c5ea59525230e2a": 24,
    }


def test_mismatch_message_lists_keys(musetok_vectors):
    state = load_file(str(musetok_vectors / "model" / "model.safetensors"))
    state.pop("enc_out_proj.bias")
    state["extra.weight"] = torch.zeros(1)
    state["dec_out_proj.weight"] = torch.zeros(3, 3)
    cfg = MuseTokConfig.from_dict(
        json.loads((musetok_vectors / "model" / "config.json").read_text())
    )
    with pytest.raises(checkpoint.CheckpointMismatch) as info:
        checkpoint.load_state_dict_checked(MuseTok(cfg), state)
    msg = str(info.value)
    assert "1 missing: enc_out_proj.bias" in msg
    assert "1 unexpected: extra.weight" in msg
    assert "dec_out_proj.weight (checkpoint [3, 3], model [168, 64])" in msg
    # a whole different size: many keys, the list is cut short
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"wrong shape: .*more"):
        checkpoint.load_state_dict_checked(
            MuseTok(tiny_config()), load_file(str(musetok_vectors / "model" / "model.safetensors"))
        )


# -- self-contained -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["official", "large", "small", "cpu_default"])
def test_config_round_trip(name):
    cfg = getattr(MuseTokConfig, name)()
    data = json.loads(json.dumps(cfg.to_dict()))
    assert MuseTokConfig.from_dict(data) == cfg


def test_named_sizes():
    assert (MuseTokConfig.large().num_quantizers, MuseTokConfig.large().codebook_size) == (16, 2048)
    assert (MuseTokConfig.small().num_quantizers, MuseTokConfig.small().codebook_size) == (8, 1024)
    official = MuseTokConfig.official()
    assert (official.enc_n_layer, official.enc_d_model, official.d_latent) == (12, 512, 128)
    assert (official.enc_seqlen, official.max_bars, official.dec_seqlen, official.pad_id) == (
        128,
        16,
        1280,
        167,
    )
    reference_kwargs = dict(
        enc_n_layer=2, enc_n_head=4, enc_d_model=64, enc_d_ff=128, dec_n_layer=2, dec_n_head=4,
        dec_d_model=64, dec_d_ff=128, d_vae_latent=32, d_embed=64, n_token=168,
        num_quantizers=4, codebook_size=64, rotation_trick=True, rvq_type="SimVQ",
    )  # fmt: skip
    assert MuseTokConfig.from_dict(reference_kwargs).d_latent == 32
    with pytest.raises(ValueError, match="d_embed"):
        MuseTokConfig(d_embed=256)
    with pytest.raises(ValueError, match="SimVQ"):
        MuseTokConfig.from_dict({"rvq_type": "FSQ"})


def test_cpu_default_forward_backward():
    torch.manual_seed(0)
    cfg = MuseTokConfig.cpu_default()
    model = MuseTok(cfg).train()
    rng = np.random.default_rng(0)
    samples = [decoder_sample(*random_piece(rng, n), dec_seqlen=256) for n in (5, 20)]
    enc_ids = torch.from_numpy(np.stack([s.enc.ids for s in samples]))
    enc_mask = torch.from_numpy(np.stack([s.enc.pad_mask for s in samples]))
    dec_inp = torch.from_numpy(np.stack([s.dec_input for s in samples]))
    dec_tgt = torch.from_numpy(np.stack([s.dec_target for s in samples]))
    bar_pos = torch.from_numpy(np.stack([s.bar_pos for s in samples]))
    out = model(enc_ids, enc_mask, dec_inp, bar_pos)
    assert out.logits.shape == (2, 256, cfg.n_token)
    assert out.codes.shape == (2, cfg.max_bars, cfg.num_quantizers)
    losses = model.compute_loss(out, dec_tgt, beta=1.0)
    assert torch.isfinite(losses["total_loss"])
    losses["total_loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in (
        "encoder.tr_encoder.layers.0.linear1.weight",  # through the rotation trick
        "enc_out_proj.weight",
        "residual_sim_vq.layers.0.code_transform.weight",
        "decoder.seg_emb_proj.weight",
        "dec_out_proj.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # the template layer is never run
    assert grads["encoder.tr_encoder_layer.linear1.weight"] is None


def test_bar_rows_truncation_and_mask():
    ids = [0, 5, 6] + [0] + list(range(1, 200)) + [0, 7]
    starts = [0, 3, 203]
    rows = bar_rows(ids, starts)
    assert rows.n_truncated == 1
    assert rows.ids.shape == (3, 128) and rows.pad_mask.shape == (3, 128)
    assert rows.ids[0, :3].tolist() == [0, 5, 6] and (rows.ids[0, 3:] == 167).all()
    assert rows.pad_mask[0].tolist() == [False] * 3 + [True] * 125
    assert rows.ids[1].tolist() == ids[3 : 3 + 128] and not rows.pad_mask[1].any()
    # a one-token bar still leaves position 1 unmasked (reference rule)
    assert rows.pad_mask[2, :2].tolist() == [False, False] and rows.pad_mask[2, 2:].all()
    seg = segment_rows(ids, starts, 0)
    assert seg.ids.shape == (16, 128) and (seg.ids[3:] == 167).all()
    assert not seg.pad_mask[3:, :2].any() and seg.pad_mask[3:, 2:].all()


def test_decoder_sample_layout():
    rng = np.random.default_rng(1)
    ids, starts = random_piece(rng, 5)
    s = decoder_sample(ids, starts)
    assert s.n_bars == 5 and s.length == len(ids)
    assert s.bar_pos.tolist() == starts + [len(ids)] * 12
    assert s.dec_input.shape == s.dec_target.shape == (1280,)
    assert s.dec_input[: len(ids)].tolist() == ids and (s.dec_input[len(ids) :] == 167).all()
    assert s.dec_target[: len(ids) - 1].tolist() == ids[1:]

    ids, starts = random_piece(rng, 40, max_len=120)
    s = decoder_sample(ids, starts, start_bar=3)
    seg_tokens = ids[starts[3] : starts[19]]
    assert s.n_bars == 16 and s.bar_pos[-1] == len(seg_tokens)
    assert s.bar_pos[:-1].tolist() == [p - starts[3] for p in starts[3:19]]
    assert s.length == min(len(seg_tokens), 1280)
    padded = seg_tokens + [167] * max(0, 1281 - len(seg_tokens))
    assert s.dec_input.tolist() == padded[:1280]
    assert s.dec_target.tolist() == padded[1:1281]
    long_ids, long_starts = random_piece(rng, 20, max_len=250)
    s = decoder_sample(long_ids, long_starts)
    assert s.length == 1280 < s.bar_pos[-1]  # truncated; bar_pos keeps the full positions
    assert s.dec_target.tolist() == long_ids[1:1281]
    with pytest.raises(ValueError):
        decoder_sample(ids, starts, start_bar=25)


def test_segment_embedding_matches_loop():
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 3)
    bar_pos = torch.tensor([[0, 3, 3, 7, 9], [0, 2, 5, 5, 5]])
    seg = MuseTok.segment_embedding(latents, bar_pos, 12)
    want = torch.zeros(12, 2, 3)
    for n in range(2):
        for b, (st, ed) in enumerate(zip(bar_pos[n, :-1], bar_pos[n, 1:], strict=True)):
            want[st:ed, n] = latents[n, b]
    assert torch.equal(seg, want)


def test_encode_pieces_order_and_single_bar_batches():
    torch.manual_seed(0)
    model = MuseTok(tiny_config()).eval()
    rng = np.random.default_rng(2)
    pieces = [random_piece(rng, n) for n in (3, 1, 7)]
    pieces.insert(1, ([], []))  # a piece without bars
    pieces[-1] = tuple(np.asarray(x) for x in pieces[-1])  # shard rows may be arrays
    ref = list(encode_pieces(model, pieces, batch_size=1000))
    one = list(encode_pieces(model, pieces, batch_size=1))
    assert [r.codes.shape[0] for r in ref] == [3, 0, 1, 7]
    for a, b in zip(ref, one, strict=True):
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_allclose(a.latents, b.latents, rtol=0, atol=1e-6)
    with torch.inference_mode():
        codes = torch.from_numpy(ref[3].codes)
        back = model.latents_from_codes(codes).numpy()
    np.testing.assert_allclose(back, ref[3].latents, rtol=0, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MuseTok(tiny_config()).eval()
    checkpoint.save(model, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    loaded = checkpoint.load(tmp_path / "ckpt")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_official_style_model_pt(tmp_path):
    """The reference saves torch.save(model.state_dict()); load it with weights_only."""
    torch.manual_seed(0)
    cfg = tiny_config(enc_n_head=4, dec_n_head=4)
    model = MuseTok(cfg).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = checkpoint.load(tmp_path / "model.pt", n_head=4)  # sizes inferred from shapes
    assert loaded.config == cfg
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="n_head"):
        checkpoint.load(tmp_path / "model.pt")
    # the reference copies its yaml next to the checkpoints
    (tmp_path / "config.yaml").write_text(
        "data:\n  max_bars: 16\n  enc_seqlen: 128\n  dec_seqlen: 1280\n"
        "model:\n  enc_n_layer: 1\n  enc_n_head: 4\n  enc_d_model: 16\n  enc_d_ff: 32\n"
        "  dec_n_layer: 1\n  dec_n_head: 4\n  dec_d_model: 16\n  dec_d_ff: 32\n"
        "  d_embed: 16\n  d_latent: 8\n  num_quantizers: 3\n  codebook_size: 16\n"
        "  rotation_trick: True\n  rvq_type: SimVQ\n"
    )
    assert checkpoint.load(tmp_path).config == cfg
    # a dict wrapping the state_dict, with a DataParallel prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    assert checkpoint.load(tmp_path / "wrapped.pt", config=cfg).config == cfg


def test_infer_official_config_from_shapes():
    """Shapes of the official state_dict give back the official config (heads default to 8)."""
    with torch.device("meta"):
        state = MuseTok(MuseTokConfig.official()).state_dict()
    assert checkpoint.infer_config(state) == MuseTokConfig.official()
    with torch.device("meta"):
        state = MuseTok(MuseTokConfig.small()).state_dict()
    assert checkpoint.infer_config(state) == MuseTokConfig.small()


def test_packed_encoder_equals_the_unpacked_path_with_little_padding():
    """Bars bucketed by length give today's (input-order, trimmed) codes and latents, with
    most of its padding gone."""
    from midipipe.musetok.encode import PadStats

    torch.manual_seed(0)
    model = MuseTok(MuseTokConfig.cpu_default()).eval()
    rng = np.random.default_rng(0)
    pieces = []
    for _ in range(12):  # bars of 2..160 tokens: some truncated, most short
        lengths = rng.choice([2, 5, 12, 20, 31, 47, 90, 160], size=rng.integers(1, 30))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        ids = rng.integers(3, model.config.n_token, size=int(lengths.sum())).tolist()
        pieces.append((ids, starts))
    before, after = PadStats(), PadStats()
    old = list(encode_pieces(model, pieces, batch_size=16, pack=False, stats=before))
    new = list(encode_pieces(model, pieces, batch_size=16, pack=True, stats=after))
    assert len(new) == len(pieces)
    for a, b, (_, starts) in zip(old, new, pieces, strict=True):
        assert len(b.codes) == len(starts) and a.n_truncated == b.n_truncated
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_allclose(a.latents, b.latents, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.encoder_out, b.encoder_out, rtol=0, atol=1e-5)
    assert after.padded_share < before.padded_share / 2
