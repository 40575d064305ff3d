"""REMI-z chunks: how the hierarchical model reads a piece for the genre plan's own LM.

When `genre_hier.lm_path` is a Hugging Face folder with its tokenizer (the plan's `m2m_pt`
GPT-2), a piece is read as the plan reads it, with the plan's library `remi_z`: the MIDI file
becomes a `MultiTrack`, bars without any track are dropped, the rest are cut into runs of
`bars_per_chunk` bars (the last run may be shorter), each run is written as a REMI-z string
(time-signature and tempo tokens, no velocity; remi_z leaves drum tracks out) and tokenized by
the LM folder's own tokenizer, special tokens included.

REMI-z 0.7.4 (and 0.7.3) on PyPI ship without `dict_time_signature.yaml`, the table of `s-k`
tokens that `MultiTrack()` and `TimeSignatureUtil` read from the package folder. That table is
an enumeration: denominators 1..64, numerators 1..2 x denominator, in that order (the limits
`MidiEncoder.reduce_time_signature` reduces to; equal to the file in the REMI-z repository).
It is derived here when the file is missing and put in the class cache remi_z provides.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import remi_z
from remi_z.midi_encoding import convert_tempo_to_id
from remi_z.time_signature_utils import TimeSignatureUtil
from remi_z.utils import read_yaml

from midipipe.core.errors import BadMidi, ParamError
from midipipe.data.midi import load_score
from midipipe.genre.phrases import Cut, spread

log = logging.getLogger(__name__)

TS_FILE = "dict_time_signature.yaml"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MAX_DENOMINATOR_POWER = 6  # remi_z reduces time signatures to denominators <= 2**6
MIN_TEMPO, MAX_TEMPO = 16, 256  # remi_z clamps tempi (qpm) to this range before binning
# remi_z lists every 1/12-beat position up to the last note onset: a stray note far out costs
# time and memory (100,000 beats: 10 s, +150 MB), so longer files are refused up front
MAX_BEATS = 100_000


def time_signature_table() -> dict[str, str]:
    """REMI-z's `s-k` token -> "(numerator, denominator)" (the text its yaml file holds)."""
    pairs = [(n, 2**e) for e in range(MAX_DENOMINATOR_POWER + 1) for n in range(1, 2 * 2**e + 1)]
    return {f"s-{k}": f"({n}, {d})" for k, (n, d) in enumerate(pairs)}


@functools.cache
def _time_signatures() -> dict[str, str]:
    """The packaged table when the installed remi_z has it, else the derived one; either way
    in `TimeSignatureUtil`'s cache, where remi_z looks first."""
    packaged = Path(remi_z.__file__).with_name(TS_FILE)
    table = read_yaml(packaged) if packaged.exists() else time_signature_table()
    TimeSignatureUtil.ts_dict = table
    return table


class _Piece(remi_z.MultiTrack):
    """A `MultiTrack` that takes the time-signature table from the cache instead of reading
    the package file in its constructor (the file 0.7.4 lacks)."""

    def __init__(self, bars: list) -> None:
        self.bars = bars
        self.update_ts_and_tempo()
        self.ts_dict = _time_signatures()


def token_space() -> list[str]:
    """Every token a chunk can hold: the vocabulary an LM's tokenizer must cover."""
    tempi = range(convert_tempo_to_id(MIN_TEMPO), convert_tempo_to_id(MAX_TEMPO) + 1)
    return [
        *_time_signatures(),
        *(f"t-{k}" for k in tempi),
        *(f"i-{k}" for k in range(128)),  # programs; drums (i-128) are left out
        *(f"o-{k}" for k in range(128)),  # onset in the bar, 12 per beat (Note's range)
        *(f"p-{k}" for k in range(128)),
        *(f"d-{k}" for k in range(1, 128)),  # remi_z clamps durations to [1, 127]
        "b-1",
    ]


@contextlib.contextmanager
def _midi_file(src: bytes | str | Path) -> Iterator[str]:
    """A path remi_z can open (it reads files only): `src` itself, or its bytes in a temp file."""
    if not isinstance(src, bytes):
        yield str(src)
        return
    with tempfile.NamedTemporaryFile(suffix=".mid") as f:
        f.write(src)
        f.flush()
        yield f.name


def segments(src: bytes | str | Path, bars_per_segment: int) -> tuple[list[str], int]:
    """(REMI-z strings of the non-empty bars in runs of `bars_per_segment`, non-empty bars).

    BadMidi when symusic or remi_z cannot read the file, it has no notes or it is longer than
    `MAX_BEATS`. remi_z prints its warnings; they go to the log, not to stdout (where
    `midipipe genre` writes its JSON)."""
    score = load_score(src)  # a quick check in C++ before remi_z's pure-Python reader
    beats = score.end() / score.ticks_per_quarter
    if beats > MAX_BEATS:
        raise BadMidi(f"{beats:.0f} beats long: REMI-z reads at most {MAX_BEATS}")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), _midi_file(src) as path:
            bars = [b for b in _Piece.from_midi(path).bars if len(b)]  # no track: empty
            runs = [bars[i : i + bars_per_segment] for i in range(0, len(bars), bars_per_segment)]
            texts = [
                _Piece(run).to_remiz_str(with_ts=True, with_tempo=True, with_velocity=False)
                for run in runs
            ]
    except Exception as exc:  # remi_z asserts, and passes on what miditoolkit/mido raise
        raise BadMidi(f"REMI-z cannot read it: {type(exc).__name__}: {exc or 'no detail'}") from exc
    finally:
        if printed.getvalue().strip():
            log.debug(
                "remi_z on %s: %s",
                src if not isinstance(src, bytes) else "<bytes>",
                printed.getvalue().strip(),
            )
    return texts, len(bars)


def has_tokenizer(folder: str | Path) -> bool:
    """Whether an LM folder carries its own tokenizer (then its chunks are REMI-z)."""
    return any((Path(folder) / name).exists() for name in TOKENIZER_FILES)


def load_tokenizer(folder: str | Path):
    """The LM folder's own tokenizer, offline, no remote code; ParamError naming lm_path
    when it cannot read REMI-z (`check_tokenizer`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises assorted types for a foreign tokenizer
        raise ParamError(
            f"genre_hier.lm_path: cannot load the tokenizer in {folder}: {exc}"
        ) from exc
    check_tokenizer(tokenizer, folder)
    return tokenizer


def check_tokenizer(tokenizer, folder: str | Path) -> None:
    """A tokenizer built for another vocabulary gives REMI-z tokens ids the LM never saw (or
    `[UNK]`): it must hold every token of `token_space`, and read a REMI-z string one token
    per word."""
    vocab = tokenizer.get_vocab()
    space = token_space()
    missing = [t for t in space if t not in vocab]
    if missing:
        raise ParamError(
            f"genre_hier.lm_path: the tokenizer in {folder} lacks {len(missing)} of the "
            f"{len(space)} REMI-z tokens (e.g. {', '.join(missing[:5])}): it was built for "
            "another vocabulary, so the LM cannot read REMI-z chunks"
        )
    probe = "s-9 t-24 i-0 o-0 p-60 d-12 o-12 p-64 d-127 b-1"
    got = tokenizer(probe, add_special_tokens=False)["input_ids"]
    want = [vocab[t] for t in probe.split()]
    if list(got) != want:
        raise ParamError(
            f"genre_hier.lm_path: the tokenizer in {folder} splits REMI-z text into "
            f"{tokenizer.convert_ids_to_tokens(list(got))}, not one token per word: it is not "
            "a REMI-z (word-level) tokenizer"
        )


def encode(tokenizer, texts: Sequence[str], max_len: int) -> tuple[list[np.ndarray], int]:
    """(token ids of each text, special tokens included, cut to `max_len` the way the
    tokenizer truncates; how many were cut)."""
    ids = tokenizer(list(texts))["input_ids"] if texts else []
    long = [i for i, x in enumerate(ids) if len(x) > max_len]
    if long:
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_len)
        for i, x in zip(long, cut["input_ids"], strict=True):
            ids[i] = x
    return [np.asarray(x, dtype=np.int64) for x in ids], len(long)


def chunks(
    tokenizer,
    src: bytes | str | Path,
    bars_per_chunk: int,
    max_len: int,
    max_chunks: int = 0,
) -> Cut:
    """A piece's REMI-z chunks as token ids; `max_chunks` > 0 keeps that many, spread over
    the piece (as `phrases.chunks` does for REMI ids). BadMidi when remi_z cannot read it."""
    texts, n_bars = segments(src, bars_per_chunk)
    texts = [texts[i] for i in spread(len(texts), max_chunks)]
    seqs, truncated = encode(tokenizer, texts, max_len)
    return Cut(seqs, n_bars, truncated)
