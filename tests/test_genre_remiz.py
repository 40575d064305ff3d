"""The hierarchical genre model over the plan's own kind of LM: a Hugging Face GPT-2 folder
with a REMI-z word-level tokenizer (`genre.remiz`), all offline, tiny and built here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import symusic
import torch
import transformers
from remi_z.midi_encoding import MidiEncoder
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import midipipe.genre.predict as gp
from midipipe.core.errors import BadMidi, ParamError
from midipipe.genre import remiz
from midipipe.genre.hier_model import FrozenLM
from midipipe.genre.params import GenreHierParams
from tests.conftest import build_midi
from tests.test_genre import STYLES, hier_over_lm, project  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = ["[UNK]", "[EOS]", "[BOS]", "[PAD]"]  # m2m_pt's, at its ids 0, 1, 2 (+ a pad)


def save_tokenizer(folder, words, pre=None):
    """A word-level tokenizer as `save_pretrained` writes it: [BOS] text [EOS], like m2m_pt's."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre or pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 1)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    fast.pad_token = "[PAD]"
    fast.save_pretrained(folder)
    return len(vocab)


def save_gpt2(folder, vocab_size: int, n_positions: int = 128) -> None:
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=1, n_head=2
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def remiz_lm(tmp_path_factory):
    """A tiny GPT-2 folder with a tokenizer over REMI-z's whole token space."""
    folder = tmp_path_factory.mktemp("m2m_tiny")
    transformers.set_seed(0)
    save_gpt2(folder, save_tokenizer(folder, remiz.token_space()))
    return folder


def gappy_midi(n_bars: int, empty: set[int], drums_only: set[int], numerator: int = 3) -> bytes:
    """`n_bars` bars of numerator/4 with a melody note per beat but in the `empty` and
    `drums_only` bars, and a drum hit in every bar but the `empty` ones."""
    tpq = 480
    score = symusic.Score(tpq)
    score.time_signatures.append(symusic.TimeSignature(0, numerator, 4))
    score.tempos.append(symusic.Tempo(0, 120.0))
    piano = symusic.Track(name="piano", program=0)
    drums = symusic.Track(name="drums", program=0, is_drum=True)
    for b in range(n_bars):
        start = b * numerator * tpq
        if b not in empty:
            drums.notes.append(symusic.Note(start, tpq // 2, 36, 90))
        if b not in empty | drums_only:
            for k in range(numerator):
                piano.notes.append(symusic.Note(start + k * tpq, tpq, 60 + (b + k) % 12, 80))
    score.tracks.extend([piano, drums])
    return score.dumps_midi()


def test_time_signature_table_holds_whatever_remi_z_reduces_to():
    table = remiz.time_signature_table()
    assert len(table) == 254 and table["s-9"] == "(4, 4)" and table["s-8"] == "(3, 4)"
    reduce = MidiEncoder().reduce_time_signature
    values = set(table.values())
    for d in (1, 2, 4, 8, 16, 32, 64):
        for n in range(1, 33):
            assert "({}, {})".format(*reduce(n, d)) in values


def test_segments_drop_empty_bars_and_cut_runs_of_8(tmp_path):
    data = gappy_midi(20, empty={3, 4, 5}, drums_only={9})
    texts, n_bars = remiz.segments(data, 8)
    assert n_bars == 17 and [t.split().count("b-1") for t in texts] == [8, 8, 1]
    words = [w for t in texts for w in t.split()]
    assert set(words) <= set(remiz.token_space())
    assert words[:3] == ["s-8", "t-35", "i-0"]  # 3/4, tempo 120, the piano
    assert "i-128" not in words and words.count("o-0") == 16  # no drums: bar 9 has no notes
    assert "b-1 s-8 t-35 b-1" in texts[0]  # but a track, so the plan's filter keeps it
    path = tmp_path / "gappy.mid"
    path.write_bytes(data)
    assert remiz.segments(path, 8) == (texts, 17)  # a file reads as its bytes do
    with pytest.raises(BadMidi, match="cannot parse MIDI"):
        remiz.segments(b"MThd broken", 8)
    with pytest.raises(BadMidi, match="REMI-z cannot read it: ValueError: Invalid time sig"):
        remiz.segments(build_midi(numerator=3, denominator=128), 8)  # no s- token for 3/128
    stray = symusic.Score.from_midi(data)  # a note 200,000 beats in: refused before remi_z
    stray.tracks[0].notes.append(symusic.Note(480 * 200_000, 480, 60, 80))
    with pytest.raises(BadMidi, match="200001 beats long"):
        remiz.segments(stray.dumps_midi(), 8)


def test_chunks_are_tokenized_by_the_lm_folders_tokenizer(remiz_lm):
    tok = remiz.load_tokenizer(remiz_lm)
    data = build_midi(n_bars=20)
    cut = remiz.chunks(tok, data, 8, max_len=40, max_chunks=2)
    assert cut.n_bars == 20 and len(cut.seqs) == 2 and cut.truncated == 2
    assert [len(s) for s in cut.seqs] == [40, 40] and cut.seqs[0][-1] == tok.eos_token_id
    full = remiz.chunks(tok, data, 8, max_len=1000)
    texts, _ = remiz.segments(data, 8)
    assert full.truncated == 0 and len(full.seqs) == 3
    assert tok.convert_ids_to_tokens(full.seqs[2].tolist()) == ["[BOS]", *texts[2].split(), "[EOS]"]


def test_a_tokenizer_for_another_vocabulary_is_refused(tmp_path, tokenizer):
    remi = tmp_path / "remi"  # word-level over the project's REMI (miditok) tokens
    save_gpt2(remi, save_tokenizer(remi, list(tokenizer.vocab)))
    with pytest.raises(ParamError, match=r"genre_hier.lm_path: .* lacks \d+ of the 815 REMI-z"):
        FrozenLM(remi, tokenizer)
    split = tmp_path / "split"  # every REMI-z token, but "s-9" read as "s", "-", "9"
    save_gpt2(split, save_tokenizer(split, remiz.token_space(), pre_tokenizers.Whitespace()))
    with pytest.raises(ParamError, match="not one token per word"):
        FrozenLM(split, tokenizer)
    small = tmp_path / "small"  # a model with fewer embeddings than the tokenizer has ids
    save_gpt2(small, save_tokenizer(small, remiz.token_space()) - 1)
    with pytest.raises(ValueError, match="another vocabulary"):
        FrozenLM(small, tokenizer)
    pickled = tmp_path / "pickled"  # weights only as a pickle: never loaded
    save_gpt2(pickled, save_tokenizer(pickled, remiz.token_space()))
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights .* are never loaded"):
        FrozenLM(pickled, tokenizer)


def break_piece(shard: Path, piece_id: str) -> None:
    """Replace one piece's bytes in a store shard with a broken file, row groups kept."""
    table = pq.read_table(shard)
    music = [
        b"MThd broken" if md5 == piece_id else data
        for md5, data in zip(table["md5"].to_pylist(), table["music"].to_pylist(), strict=True)
    ]
    column = table.schema.get_field_index("music")
    pq.write_table(
        table.set_column(column, "music", pa.array(music, pa.binary())), shard, row_group_size=8
    )


def test_hier_model_over_a_remiz_lm_trains_and_predicts(project, remiz_lm, tmp_path):  # noqa: F811
    corpus = tmp_path / "project"
    shutil.copytree(project, corpus, ignore=shutil.ignore_patterns("models", "ckpt*"))
    break_piece(
        corpus / "corpus" / "part-00000.parquet", "low09"
    )  # a train piece remi_z can't read
    hp = GenreHierParams(lm_path=str(remiz_lm), min_tag_pieces=2, patience=3, d_attn=16)
    r = hier_over_lm(corpus, hp, tmp_path, epochs=8)
    m = r.metrics
    assert m["status"] == "trained" and m["lm_kind"] == "hf-gpt2" and m["chunk_tokens"] == "remi-z"
    assert m["unreadable_pieces"] == 1 and m["pieces_train"] == 11 and m["pieces_test"] == 4
    assert m["truncated_chunks"] > 0  # 8 bars of 4 notes + a bass note: past 128 positions
    losses = [h["valid_loss"] for h in r.job.history]
    assert min(losses) < losses[0]  # the head learns from the frozen LM's states
    song = tmp_path / "high.mid"
    song.write_bytes(build_midi(n_bars=12, **STYLES["high"]))
    got = gp.predict(song, model="hier", model_dir=tmp_path / "genre_hier")
    assert got["n_chunks"] == 2 and got["n_bars"] == 12
    assert set(got["probabilities"]) == {"high", "low", "tag"}
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd broken")
    assert "error" in gp.predict(bad, model="hier", model_dir=tmp_path / "genre_hier")
    lm, model = tmp_path / "lm", tmp_path / "hier"  # the LM's tokenizer swapped after training
    shutil.copytree(remiz_lm, lm)
    shutil.copytree(tmp_path / "genre_hier", model)
    config = json.loads((model / "config.json").read_text())
    assert config["chunk_tokens"] == "remi-z"
    config["lm"]["path"] = str(lm)
    (model / "config.json").write_text(json.dumps(config))
    assert gp.load_predictor("hier", model).lm.remiz is not None  # as trained: loads
    save_tokenizer(lm, remiz.token_space()[::-1])  # same tokens, other ids
    with pytest.raises(ValueError, match="another tokenizer"):
        gp.load_predictor("hier", model)


def test_remiz_on_miditok_test_files(external_data):
    files = external_data / "miditok-tests"
    with pytest.raises(BadMidi, match="cannot parse MIDI"):
        remiz.segments(files / "corrupted" / "ValueError_Control168.mid", 8)
    with pytest.raises(BadMidi, match="no notes"):
        remiz.segments(files / "one_track" / "empty.mid", 8)
    texts, n_bars = remiz.segments(files / "multitrack" / "Funkytown.mid", 8)
    assert len(texts) == -(-n_bars // 8) and n_bars > 8
    assert {w for t in texts for w in t.split()} <= set(remiz.token_space())
