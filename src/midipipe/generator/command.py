"""`midipipe generate`: one piece (or take after take) from a trained generator folder."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import symusic
import torch
from tqdm import tqdm

from midipipe.core.device import resolve_device
from midipipe.core.errors import BadMidi
from midipipe.data.composers import ANY, composer_id_of
from midipipe.data.midi import load_score
from midipipe.generator import COMPOSERS_FILE, TOKENIZER_FILE, GenerateOptions
from midipipe.generator.corpus import read_table, test_pieces_of
from midipipe.generator.generate import primer_of, sampling_threads, trained_sampling
from midipipe.generator.gpt import GPT, load_model
from midipipe.generator.keys import primer_keys
from midipipe.generator.order import as_trained_ids, trained_order
from midipipe.generator.sampling import RemiGrammar, SampleConfig, generate, to_midi
from midipipe.tokens import remi


def _tokenizer_path(opts: GenerateOptions) -> Path:
    if opts.tokenizer:
        return Path(opts.tokenizer)
    own = Path(opts.model_dir) / TOKENIZER_FILE
    return own if own.exists() else Path(opts.data_dir) / "tokens" / "remi" / TOKENIZER_FILE


def _primer(
    opts: GenerateOptions, composer: str, tokenizer, grammar: RemiGrammar
) -> tuple[list[int], str]:
    """Primer ids (key-normalised and chords bottom-up, whole piece, when the model was
    trained so) and where they came from."""
    keys = primer_keys(opts.model_dir, tokenizer.vocab)
    order = trained_order(opts.model_dir, tokenizer.vocab)

    def primer(ids, bars, n: int) -> list[int]:
        return primer_of(as_trained_ids(ids, keys, order), bars, n, grammar)

    if opts.primer:
        path = Path(opts.primer)
        try:
            ids, bars = remi.encode(tokenizer, load_score(path))
        except (BadMidi, OSError) as exc:
            raise ValueError(f"cannot use primer {path}: {exc}") from None
        n = opts.seed_length or len(ids)
        return primer(ids.tolist(), bars.tolist(), n), str(path)
    if opts.seed_length == 0:
        return [], "none"
    data = Path(opts.data_dir)
    manifest, tokens = data / "manifest.parquet", data / "tokens" / "remi"
    if not manifest.exists() or not tokens.is_dir():
        raise ValueError(
            f"--seed-length {opts.seed_length} primes from a held-out piece in "
            f"{manifest} and {tokens}, which are missing: pass --primer FILE.mid "
            "or --seed-length 0"
        )
    pool = test_pieces_of(tokens, manifest, None if composer == ANY else composer)
    if not pool:
        raise ValueError(
            f"no test-split piece of {composer} in {manifest}: pass --primer "
            "FILE.mid or --seed-length 0"
        )
    pick = torch.randint(len(pool), (1,), generator=torch.Generator().manual_seed(opts.seed))
    ids, bars = pool[int(pick)]
    return primer(ids, bars, opts.seed_length), f"test piece of {composer}"


def _one_take(model: GPT, tokenizer, opts: GenerateOptions, out: Path) -> dict:
    table = read_table(Path(opts.model_dir) / COMPOSERS_FILE)
    name, cid = composer_id_of(table, opts.composer)
    cfg = SampleConfig(
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        repetition_penalty=opts.repetition_penalty,
        guidance=opts.guidance,
        max_tokens=opts.max_tokens,
        max_bars=opts.max_bars,
        seed=opts.seed,
        **trained_sampling(opts.model_dir, tokenizer.vocab, opts.chord_prior, strict=False),
    )
    grammar = RemiGrammar(tokenizer)
    primer, source = _primer(opts, name, tokenizer, grammar)
    bar = tqdm(total=cfg.max_tokens, desc=f"sampling {name}", unit="tok", disable=not opts.progress)

    def tick(*_) -> None:  # one forward per token; a hook returning None keeps the output
        bar.update(1)

    hook = model.register_forward_hook(tick)
    try:
        with sampling_threads(next(model.parameters()).device):
            ids, stats = generate(model, tokenizer, cid, primer, cfg)
    finally:
        hook.remove()
        bar.close()
    path = to_midi(tokenizer, ids, out)
    notes = symusic.Score(str(path)).note_num()
    return {
        "out": str(path),
        "tokens_json": str(path.with_suffix(".json")),
        "composer": name,
        "composer_id": cid,
        "guidance": opts.guidance,
        "seed": opts.seed,
        "primer": source,
        "primer_tokens": len(primer),
        "notes": int(notes),
        **stats,
    }


SETTABLE = {
    "composer": str,
    "guidance": float,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "repetition_penalty": float,
    "chord_prior": float,
    "max_tokens": int,
    "max_bars": int,
    "seed_length": int,
    "seed": int,
    "primer": str,
}
INTERACTIVE_HELP = (
    f"enter: another take | key=value ... ({', '.join(SETTABLE)}): change and sample | q: quit"
)


def _apply(opts: GenerateOptions, line: str) -> GenerateOptions:
    """Options changed by an interactive `key=value ...` line."""
    changes: dict[str, Any] = {}
    for item in line.split():
        key, sep, value = item.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in SETTABLE:
            raise ValueError(f"cannot set {item!r}: {INTERACTIVE_HELP}")
        try:
            changes[key] = SETTABLE[key](value)
        except ValueError:
            raise ValueError(f"{key}: not a {SETTABLE[key].__name__}: {value!r}") from None
    return dataclasses.replace(opts, **changes)


def generate_command(opts: GenerateOptions, ask: Callable[[str], str] = input) -> dict:
    """Sample one piece (or, with `interactive`, take after take) and return a summary.

    Errors a user can fix (an unknown composer, guidance < 1, an unreadable primer, a
    checkpoint from another vocabulary) are ValueError/FileNotFoundError with the reason.
    """
    tokenizer_json = _tokenizer_path(opts)
    if not tokenizer_json.exists():
        raise FileNotFoundError(f"tokenizer {tokenizer_json} missing (pass --tokenizer)")
    tokenizer = remi.load_tokenizer(tokenizer_json)
    table = read_table(Path(opts.model_dir) / COMPOSERS_FILE)
    composer_id_of(table, opts.composer)  # fail on a bad name before loading weights
    try:
        model = load_model(opts.model_dir, tokenizer, resolve_device(opts.device))
    except ValueError as exc:
        raise ValueError(f"{opts.model_dir} does not match {tokenizer_json}: {exc}") from None
    out = Path(opts.out)
    summary = _one_take(model, tokenizer, opts, out)
    if not opts.interactive:
        return summary
    takes = [summary]
    print(json.dumps(summary))
    print(INTERACTIVE_HELP)
    while True:
        try:
            line = ask("generate> ").strip()
        except EOFError:
            break
        if line.lower() in ("q", "quit", "exit"):
            break
        try:
            opts = _apply(opts, line) if line else dataclasses.replace(opts, seed=opts.seed + 1)
            path = out.with_name(f"{out.stem}_{len(takes) + 1}{out.suffix}")
            takes.append(_one_take(model, tokenizer, opts, path))
            print(json.dumps(takes[-1]))
        except ValueError as exc:
            print(f"error: {exc}")
    return {**takes[-1], "takes": len(takes)}
