"""The embedded default corpus: music21's bundled scores, converted to MIDI in a process pool.

It needs no download (it ships with the `music21` pip package), so `make run` works offline.
What is taken, and every label, comes from `music21_catalogue` (see its docstring for the
song_id rules: movements of one work, chorales of one cantata, movements of one mass share a
song_id; each folk tune is its own). Multi-tune ABC collections (O'Neill's, Ryan's, Essen...)
yield one piece per tune; Josquin's ABC files, whose tunes are the voices of one piece, are
merged back into one score.

Conversion is slow (music21 parsing), so it runs in a pool of spawned processes; each piece
has a time limit enforced inside its worker (SIGALRM) and again by the parent, which replaces
the pool if a worker stops answering. A piece that fails is logged and skipped.
Output bytes depend only on the score (see `music21_to_midi`), so piece ids are stable.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .base import Piece, SourceError
from .music21_catalogue import CATALOGUE, DEFAULT_CAPS, GROUPS, SINGLE_GROUP_CAP, Entry, tune_type
from .names import normalize_composer, slug

log = logging.getLogger(__name__)

SUMMARY = "music21's bundled corpus (offline), converted to MIDI"
PARENT_GRACE_S = 30.0  # the parent waits this much longer than a worker's own time limit
WORKER_START_S = 120.0  # spawned workers import music21 (a few seconds; more on a busy machine)


@dataclass
class Music21Options:
    selection: str | list[str] = "default"  # "default", "all", or a list of group names
    max_per_group: int | None = None  # caps every group (on top of the default caps)
    workers: int | None = None  # process pool size; None: all CPUs
    timeout_s: float = 60.0  # per piece
    expand_repeats: bool = True  # write repeats out, as played


@dataclass(frozen=True)
class Work:
    """One piece to convert: a corpus file, or one tune of a multi-tune ABC file."""

    entry: Entry
    relpath: str  # under the corpus root
    number: int | None = None  # ABC tune number (X:) in a multi-tune file
    title: str | None = None
    rhythm: str | None = None  # ABC R: field

    @property
    def name(self) -> str:
        return self.relpath if self.number is None else f"{self.relpath}#{self.number}"


def corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def open_source(options: Music21Options, name: str, param: str) -> Iterator[Piece]:
    if options.max_per_group is not None and options.max_per_group < 1:
        raise SourceError(f"{param}.max_per_group: must be >= 1, got {options.max_per_group}")
    if options.workers is not None and options.workers < 1:
        raise SourceError(f"{param}.workers: must be >= 1, got {options.workers}")
    if options.timeout_s <= 0:
        raise SourceError(f"{param}.timeout_s: must be > 0, got {options.timeout_s}")
    root = corpus_root()
    if not root.is_dir():
        raise SourceError(f"{param}: the music21 corpus is not installed (looked in {root})")
    works = plan(options, root, param)
    return _convert_all(works, options, name, root)


def plan(options: Music21Options, root: Path, param: str = "music21") -> list[Work]:
    """The works a selection takes, in a fixed order, without parsing any score."""
    selection = options.selection
    if selection in ("default", "all"):
        groups = list(GROUPS)
    elif isinstance(selection, list) and selection:
        unknown = [g for g in selection if g not in GROUPS]
        if unknown:
            raise SourceError(
                f"{param}.selection: unknown group(s) {unknown}; "
                f"use 'default', 'all' or some of: {', '.join(GROUPS)}"
            )
        groups = list(dict.fromkeys(selection))
    else:
        raise SourceError(
            f"{param}.selection: expected 'default', 'all' or a list of groups, got {selection!r}"
        )
    works: list[Work] = []
    for group in groups:
        entries = [
            e for e in CATALOGUE if e.group == group and (e.in_default or selection != "default")
        ]
        candidates = sorted(
            (w for e in entries for w in _works_of(e, root)),
            key=lambda w: (w.relpath, w.number or 0),
        )
        cap = None if selection == "all" else DEFAULT_CAPS.get(group, SINGLE_GROUP_CAP)
        if options.max_per_group is not None:
            cap = options.max_per_group if cap is None else min(cap, options.max_per_group)
        works.extend(_spread(candidates, cap))
    return works


def _spread(items: list[Work], cap: int | None) -> list[Work]:
    """`cap` items evenly spaced over the list (all of them when it is short enough)."""
    if cap is None or len(items) <= cap:
        return items
    return [items[i * len(items) // cap] for i in range(cap)]


def _works_of(entry: Entry, root: Path) -> Iterator[Work]:
    for path in sorted(root.glob(entry.pattern)):
        relpath = path.relative_to(root).as_posix()
        if entry.exclude and re.search(entry.exclude, relpath):
            continue
        if path.suffix != ".abc" or entry.voices_as_tunes:
            yield Work(entry, relpath)
            continue
        tunes = _abc_tunes(path)
        if len(tunes) == 1:
            _, title, rhythm = tunes[0]
            yield Work(entry, relpath, None, title, rhythm)
        else:
            for number, title, rhythm in tunes:
                yield Work(entry, relpath, number, title, rhythm)


def _abc_tunes(path: Path) -> list[tuple[int, str | None, str | None]]:
    """(X: number, first T:, R:) of every tune in an ABC file, read from its headers."""
    tunes: list[list] = []
    for line in path.read_text(encoding="latin-1").splitlines():
        field, _, value = line.partition(":")
        value = value.strip()
        if field == "X" and value.isdigit():
            tunes.append([int(value), None, None])
        elif tunes and field == "T" and tunes[-1][1] is None:
            tunes[-1][1] = value
        elif tunes and field == "R" and tunes[-1][2] is None:
            tunes[-1][2] = value
    return [tuple(t) for t in tunes]


def _song_id(work: Work, root: Path) -> str:
    rule = work.entry.song
    stem = re.sub(r"\.\w+$", "", work.relpath)
    if rule == "parent":
        return str(Path(work.relpath).parent.as_posix())
    if rule == "cantata":
        match = re.match(r"(.*/bwv\d+)", work.relpath)
        return match.group(1) if match else stem
    if rule == "mass":
        head = (root / work.relpath).read_text(encoding="latin-1")[:4000]
        match = re.search(r"^!!!OPR:\s*(.+)$", head, re.M)
        return f"{work.entry.group}/{slug(match.group(1))}" if match else stem
    if rule.startswith("work:"):
        return f"{work.entry.group}/{rule[5:]}"
    return stem if work.number is None else f"{stem}#{work.number}"


def _labels(work: Work, composer_in_file: str | None) -> tuple[str | None, list[str]]:
    entry = work.entry
    composer = entry.composer
    if entry.composer_from_metadata and composer_in_file:
        composer = _clean_catalogue_composer(composer_in_file)
    genres = list(entry.genres)
    dance = tune_type(work.rhythm, work.title) if work.relpath.endswith(".abc") else None
    if dance and dance not in genres:
        genres.append(dance)
    return composer, genres


def _clean_catalogue_composer(text: str) -> str | None:
    """'Gherardello F-Pn 568' -> 'gherardello': drop manuscript sigla, dates, remarks."""
    first_line = re.sub(r"\(.*?\)", "", text.split("\n")[0])
    words = [w for w in first_line.split() if not re.search(r"\d|\?|^[A-Z]+-[A-Za-z]+$", w)]
    return normalize_composer(" ".join(words))


def _convert_all(
    works: list[Work], options: Music21Options, name: str, root: Path
) -> Iterator[Piece]:
    workers = min(options.workers or os.cpu_count() or 1, max(1, len(works)))
    tasks = [
        (
            str(root / w.relpath),
            w.number,
            w.entry.voices_as_tunes,
            options.expand_repeats,
            options.timeout_s,
        )
        for w in works
    ]
    log.info("%s: converting %d music21 scores with %d workers", name, len(works), workers)
    started, failed = time.monotonic(), 0
    results = _run_pool(tasks, workers, options.timeout_s)
    for index, (data, composer_in_file, error) in tqdm(
        results, total=len(tasks), desc=f"{name}: music21 -> MIDI", unit="piece"
    ):
        work = works[index]
        if data is None:
            failed += 1
            log.warning("%s: skipped %s: %s", name, work.name, error)
            continue
        composer, genres = _labels(work, composer_in_file)
        yield Piece(
            source=name,
            name=work.name,
            song_id=_song_id(work, root),
            data=data,
            composer=composer,
            genres=genres,
            period=work.entry.period,
        )
    log.info(
        "%s: %d pieces converted, %d skipped, in %.1f s",
        name,
        len(works) - failed,
        failed,
        time.monotonic() - started,
    )


# -- the pool -----------------------------------------------------------------------------

Task = tuple[str, int | None, bool, bool, float]
Result = tuple[bytes | None, str | None, str | None]  # (midi, composer in the file, error)


def _run_pool(tasks: list[Task], workers: int, timeout_s: float) -> Iterator[tuple[int, Result]]:
    """(index, result) for every task, in order. A worker that stops answering (stuck in C
    code, killed) costs one piece: the pool is replaced and the remaining tasks resubmitted."""
    context = multiprocessing.get_context("spawn")  # no inherited threads or locks
    pending = list(range(len(tasks)))
    while pending:
        with context.Pool(workers, initializer=_quiet_worker) as pool:
            _check_workers_start(pool)
            handles = [(i, pool.apply_async(convert_task, (tasks[i],))) for i in pending]
            pending = []
            for position, (index, handle) in enumerate(handles):
                try:
                    result = handle.get(timeout=timeout_s + PARENT_GRACE_S)
                except multiprocessing.TimeoutError:
                    yield index, (None, None, f"no answer in {timeout_s + PARENT_GRACE_S:.0f} s")
                    pending = [i for i, _ in handles[position + 1 :]]
                    break
                except Exception as error:  # the worker died or its answer did not arrive
                    result = (None, None, f"{type(error).__name__}: {error}")
                yield index, result


def _check_workers_start(pool) -> None:
    try:
        pool.apply_async(os.getpid).get(timeout=WORKER_START_S)
    except multiprocessing.TimeoutError:
        raise RuntimeError(
            f"music21 conversion workers did not start in {WORKER_START_S:.0f} s. Workers are "
            "spawned: a script that runs the conversion must guard its entry point with "
            "`if __name__ == '__main__':`"
        ) from None


def _quiet_worker() -> None:
    warnings.simplefilter("ignore")  # music21's MusicXML warnings: one per odd measure
    logging.getLogger("music21").setLevel(logging.ERROR)


class _PieceTimeout(BaseException):
    """Not an Exception: music21 catches Exception in places, which would swallow the alarm
    and let a slow piece run on."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    def _raise(signum, frame):
        raise _PieceTimeout(f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def convert_task(task: Task) -> Result:
    """Parse one corpus file (or one tune of it) and write it as MIDI. Runs in a worker."""
    path, number, voices_as_tunes, expand, timeout_s = task
    try:
        with _time_limit(timeout_s):
            return convert_file(path, number, voices_as_tunes, expand)
    except (Exception, _PieceTimeout) as error:
        return None, None, f"{type(error).__name__}: {error}"


def convert_file(
    path: str, number: int | None = None, voices_as_tunes: bool = False, expand: bool = True
) -> Result:
    from music21 import converter, stream

    from .music21_to_midi import score_to_midi

    parsed = converter.parse(path, number=number, forceSource=True)
    if isinstance(parsed, stream.Opus):
        if voices_as_tunes:  # each tune is one voice: stack them as the parts of one score
            score = stream.Score()
            for tune in parsed.scores:
                for part in tune.parts:
                    score.insert(0, part)
            metadata = parsed.scores[0].metadata if parsed.scores else None
        else:
            score = parsed.scores[0]
            metadata = score.metadata
    else:
        score = parsed
        metadata = score.metadata
    composer = metadata.composer if metadata is not None else None
    return score_to_midi(score, expand_repeats=expand), composer, None
