"""Stage 11: do GigaMIDI's tags differ in annotated valence and arousal?

Unit of analysis: the song (its mean valence and arousal over bars), so long songs do not weigh
more. Tags come from every metadata column present (`TAG_SOURCES`): curated, scraped and
Discogs/Last.fm/Tagtraum styles, the instrument category and an expressive flag (any track
with NOMML >= `expressive_nomml`, the GigaMIDI paper's level for expressive performance).

Per source and tag: songs, mean, std and a t-based 95% confidence interval of the mean, and the
tag against the source's other tagged songs (Mann-Whitney U, Cliff's delta, Holm's correction
over the source's tags with >= `min_songs` songs): songs may carry several tags of one source,
so that is the test that uses them all. Kruskal-Wallis needs independent groups: it takes only
the songs with exactly one of those tags, and groups with >= `min_songs` of them; epsilon^2 =
H / (n - 1) is its effect size, and pairs of its `max_tags` largest groups get Mann-Whitney,
Cliff's delta and Holm. Tests on songs of one corpus, tagged by noisy matches, say the tags
differ in this annotation, not that the music does.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from midipipe.annotate.annotator import RULES
from midipipe.annotate.params import INSTRUMENT_COLUMN
from midipipe.annotate.store import OK
from midipipe.core.io import atomic_path, part_files

log = logging.getLogger(__name__)

TAG_SOURCES = {
    "curated": "music_styles_curated",
    "scraped": "music_style_scraped",
    "discogs": "music_style_audio_text_Discogs",
    "lastfm": "music_style_audio_text_Lastfm",
    "tagtraum": "music_style_audio_text_Tagtraum",
    "instrument": INSTRUMENT_COLUMN,
    "expressive": "NOMML",
}
INSTRUMENTS = {0: "drums-only", 1: "with-drums", 2: "no-drums"}
AXES = ("valence", "arousal")
RULES_NOTE = (
    "annotations are the rule-based estimate (hand-set weights on mode, tempo, "
    "density, register and velocity cues; not learned from listener ratings)"
)
TAG_COLUMNS = ["source", "tag", "songs"] + [
    f"{a}_{s}"
    for a in AXES
    for s in ("mean", "std", "ci_low", "ci_high", "vs_rest_delta", "vs_rest_p_holm")
]
PAIR_COLUMNS = [
    "source",
    "axis",
    "tag_a",
    "tag_b",
    "songs_a",
    "songs_b",
    "cliffs_delta",
    "p",
    "p_holm",
]


@dataclass
class AnalyzeParams:
    """`analyze:` section of params.yaml (stage 11)."""

    name: str | None = None  # data/annotations/<name>/; None = annotate.name
    metadata: str | list[str] | None = None  # GigaMIDI Parquet; None = the run's meta.parquet
    min_songs: int = 10  # tags with fewer songs are left out of tests and plots
    max_tags: int = 12  # largest tags per source in plots and pairwise tests
    examples: int = 4  # songs drawn in the curves plot
    expressive_nomml: int = 12  # a track with NOMML >= this is expressive


@dataclass
class Songs:
    """Annotated songs (status ok): md5 and song-mean valence/arousal, aligned."""

    md5: list[str]
    values: np.ndarray  # [songs, 2] mean valence, mean arousal
    n_bars: np.ndarray
    estimator: str
    counts: dict[str, int]


def load_songs(folder: str | Path) -> Songs:
    table = pq.read_table(Path(folder) / "songs.parquet")
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == OK]
    estimators = sorted({r["estimator"] for r in ok}) or sorted({r["estimator"] for r in rows})
    return Songs(
        md5=[r["md5"] for r in ok],
        values=np.array([[r["valence_mean"], r["arousal_mean"]] for r in ok], np.float64).reshape(
            -1, 2
        ),
        n_bars=np.array([r["n_bars"] for r in ok], np.int64),
        estimator="+".join(estimators) or "none",
        counts={
            "songs": len(rows),
            "songs_ok": len(ok),
            "songs_failed": len(rows) - len(ok),
            "bars": int(sum(r["n_bars"] for r in ok)),
        },
    )


def tags_of(source: str, value, expressive_nomml: int = 12) -> list[str]:
    """A metadata value as tags: styles slugged, the instrument code named, NOMML as a flag."""
    from midipipe.data.sources.names import slug

    if value is None:
        return []
    if source == "instrument":
        return [INSTRUMENTS.get(int(value), str(value))]
    if source == "expressive":
        levels = [v for v in value if v is not None]
        if not levels:
            return []
        return ["expressive" if max(levels) >= expressive_nomml else "non-expressive"]
    values = [value] if isinstance(value, str) else list(value)
    return [t for t in dict.fromkeys(slug(str(v)) for v in values if v) if t]


def metadata_rows(folder: str | Path, metadata: str | list[str] | None, keep: set[str]):
    """md5 -> metadata row, for the annotated songs only, from meta.parquet or GigaMIDI files."""
    if metadata is None:
        files = [Path(folder) / "meta.parquet"]
    else:
        from midipipe.data.sources.gigamidi import parquet_files

        files = parquet_files(metadata, "analyze.metadata")
    wanted = ["md5", "title", *TAG_SOURCES.values()]
    out: dict[str, dict] = {}
    for path in files:
        handle = pq.ParquetFile(path)
        columns = [c for c in wanted if c in handle.schema_arrow.names]
        for batch in handle.iter_batches(batch_size=65536, columns=columns):
            for row in batch.to_pylist():
                if row.get("md5") in keep:
                    out[row["md5"]] = row
    return out


def mean_ci(x: np.ndarray) -> tuple[float, float, float, float]:
    """mean, std (ddof 1), and the t-based 95% interval of the mean (nan below 2 songs)."""
    from scipy import stats

    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order."""
    order = np.argsort(p)
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def kruskal(groups: dict[str, np.ndarray]) -> dict[str, float]:
    """Kruskal-Wallis H, p and epsilon^2 over the groups (values of one axis)."""
    from scipy import stats

    samples = list(groups.values())
    n = sum(len(s) for s in samples)
    h, p = stats.kruskal(*samples)
    return {
        "kruskal_h": float(h),
        "kruskal_p": float(p),
        "kruskal_neglog10_p": -math.log10(max(float(p), 1e-300)),  # metrics keep 6 decimals
        "epsilon2": float(h) / (n - 1),
    }


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Cliff's delta (P(a > b) - P(a < b), from U) and the two-sided Mann-Whitney p."""
    from scipy import stats

    u, p = stats.mannwhitneyu(a, b, alternative="two-sided")
    return 2 * float(u) / (len(a) * len(b)) - 1, float(p)


def pairwise(source: str, axis: str, groups: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for a, b in combinations(groups, 2):
        delta, p = mann_whitney(groups[a], groups[b])
        rows.append(
            {
                "source": source,
                "axis": axis,
                "tag_a": a,
                "tag_b": b,
                "songs_a": len(groups[a]),
                "songs_b": len(groups[b]),
                "cliffs_delta": delta,
                "p": float(p),
            }
        )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
    return rows


@dataclass
class Analysis:
    metrics: dict
    tags: list[dict]  # analysis_tags.csv rows
    pairs: list[dict]  # analysis_pairs.csv rows
    plot_groups: dict[str, dict[str, np.ndarray]]  # source -> tag -> [songs, 2], for plots


def analyze(songs: Songs, meta: dict[str, dict], p: AnalyzeParams) -> Analysis:
    """The statistics of every tag source present in `meta` (see the module docstring)."""
    m: dict = {
        "estimator": songs.estimator,
        "estimator_learned": RULES not in songs.estimator,
        "estimator_note": RULES_NOTE if RULES in songs.estimator else "",
        **songs.counts,
        "songs_with_metadata": sum(k in meta for k in songs.md5),
        "min_songs": p.min_songs,
    }
    for k, axis in enumerate(AXES):
        col = songs.values[:, k]
        m[f"{axis}_mean"] = float(col.mean()) if len(col) else math.nan
        m[f"{axis}_std"] = float(col.std(ddof=1)) if len(col) > 1 else math.nan
    if len(songs.md5) > 2:
        from scipy import stats

        rho = stats.spearmanr(songs.values[:, 0], songs.values[:, 1])[0]
        m["valence_arousal_spearman"] = float(rho)
    result = Analysis(m, [], [], {})
    present = {c for row in meta.values() for c in row}
    for source, column in TAG_SOURCES.items():
        if column in present:
            song_tags = [
                tags_of(source, meta.get(md5, {}).get(column), p.expressive_nomml)
                for md5 in songs.md5
            ]
            _source(source, song_tags, songs.values, p, result)
    return result


def _source(
    source: str, song_tags: list[list[str]], values: np.ndarray, p: AnalyzeParams, out: Analysis
) -> None:
    """One tag source's rows, tests and plot groups, added to `out`."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, tags in enumerate(song_tags):
        for tag in tags:
            members[tag].append(i)
    m = out.metrics
    m[f"{source}_songs_tagged"] = sum(bool(t) for t in song_tags)
    if not members:
        return
    m[f"{source}_tags"] = len(members)
    by_size = sorted(members, key=lambda t: (-len(members[t]), t))
    big = [t for t in by_size if len(members[t]) >= p.min_songs]
    rows = {t: {"source": source, "tag": t, "songs": len(members[t])} for t in by_size}
    tagged = np.flatnonzero([bool(t) for t in song_tags])
    for k, axis in enumerate(AXES):
        for t in by_size:
            stats_ = mean_ci(values[members[t], k])
            names = [f"{axis}_{s}" for s in ("mean", "std", "ci_low", "ci_high")]
            rows[t].update(zip(names, stats_, strict=True))
        # one tag against the other tagged songs: valid when songs carry several tags
        vs_rest = {}
        for t in big:
            rest = np.setdiff1d(tagged, members[t])
            if len(rest) >= p.min_songs:
                vs_rest[t] = (values[members[t], k], values[rest, k])
        if vs_rest:
            tests = [mann_whitney(a, b) for a, b in vs_rest.values()]
            adjusted = holm([pv for _, pv in tests])
            for t, (delta, _), p_holm in zip(vs_rest, tests, adjusted, strict=True):
                rows[t].update({f"{axis}_vs_rest_delta": delta, f"{axis}_vs_rest_p_holm": p_holm})
            m[f"{source}_{axis}_tags_differing"] = sum(a < 0.05 for a in adjusted)
    out.tags.extend(rows.values())
    if len(big) >= 2:
        out.plot_groups[source] = {t: values[members[t]] for t in big[: p.max_tags]}
    # Kruskal-Wallis on independent groups: songs with exactly one of the big tags
    exclusive: dict[str, list[int]] = defaultdict(list)
    for i, tags in enumerate(song_tags):
        own = set(big).intersection(tags)
        if len(own) == 1:
            exclusive[own.pop()].append(i)
    groups = {t: idx for t, idx in exclusive.items() if len(idx) >= p.min_songs}
    m[f"{source}_tags_tested"] = len(groups)
    if len(groups) < 2:
        return
    m[f"{source}_test_songs"] = sum(len(v) for v in groups.values())
    largest = sorted(groups, key=lambda t: (-len(groups[t]), t))[: p.max_tags]
    for k, axis in enumerate(AXES):
        samples = {t: values[idx, k] for t, idx in groups.items()}
        for key, value in kruskal(samples).items():
            m[f"{source}_{axis}_{key}"] = value
        out.pairs.extend(pairwise(source, axis, {t: samples[t] for t in largest}))


# -- outputs -----------------------------------------------------------------------------------


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            )


def plot_by_tag(
    groups: dict[str, dict[str, np.ndarray]], png: str | Path, title: str, fallback: np.ndarray
) -> None:
    """Box plots of song-mean valence and arousal per tag, one row per tag source; without any
    tag source, the histogram of all songs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), squeeze=False)
        for k, axis in enumerate(AXES):
            axes[0, k].hist(fallback[:, k], bins=30, range=(-1, 1), color=f"C{k}")
            axes[0, k].set_xlabel(f"song-mean {axis}")
        axes[0, 0].set_title("all songs (no tag with enough songs)", fontsize=9)
    else:
        fig, axes = plt.subplots(
            len(groups),
            2,
            squeeze=False,
            figsize=(11, 0.6 + 0.32 * sum(len(g) for g in groups.values()) + 0.8 * len(groups)),
        )
        for row, (source, tags) in enumerate(groups.items()):
            names = list(tags)[::-1]
            for k, axis in enumerate(AXES):
                ax = axes[row, k]
                ax.boxplot(
                    [tags[t][:, k] for t in names],
                    orientation="horizontal",
                    showmeans=True,
                    widths=0.6,
                    flierprops={"markersize": 2},
                )
                ax.set_yticks(
                    range(1, len(names) + 1),
                    [f"{t[:22]} ({len(tags[t])})" for t in names],
                    fontsize=7,
                )
                ax.set_xlim(-1.05, 1.05)
                ax.axvline(0, color="grey", linewidth=0.5)
                ax.set_title(f"{source}: song-mean {axis}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def example_songs(songs: Songs, meta: dict[str, dict], n: int) -> list[str]:
    """Songs at the extremes (highest/lowest valence, then arousal), 4 bars or more."""
    long = np.flatnonzero(songs.n_bars >= 4)
    if not len(long):
        long = np.arange(len(songs.md5))
    picks: list[int] = []
    for k in (0, 1):
        order = long[np.argsort(songs.values[long, k], kind="stable")]
        picks += [int(order[-1]), int(order[0])] if len(order) else []
    picks += [int(i) for i in long]
    return list(dict.fromkeys(songs.md5[i] for i in picks))[:n]


def curve_rows(folder: str | Path, keys: list[str], meta: dict[str, dict]) -> list[dict]:
    """Per-bar rows of `keys` from the parts (filtered by md5 on read)."""
    import pyarrow.dataset as pds

    parts = part_files(folder)
    if not parts or not keys:
        return []
    table = pds.dataset([str(p) for p in parts], format="parquet").to_table(
        filter=pds.field("md5").isin(keys)
    )
    rows = sorted(table.to_pylist(), key=lambda r: (keys.index(r["md5"]), r["bar"]))
    for r in rows:
        title = (meta.get(r["md5"]) or {}).get("title")
        r["piece"] = f"{r['md5'][:6]} {title or ''}".strip()
    return rows


def run(folder: str | Path, p: AnalyzeParams, metrics_dir: str | Path = "metrics") -> dict:
    """All of stage 11's outputs under `metrics_dir`; returns the flat metrics."""
    from midipipe.core.reports import write_metrics
    from midipipe.emotion import plot_curves

    folder, out = Path(folder), Path(metrics_dir)
    songs = load_songs(folder)
    meta = metadata_rows(folder, p.metadata, set(songs.md5))
    result = analyze(songs, meta, p)
    result.metrics["annotations"] = str(folder)
    run_state = folder / "run.json"
    if run_state.exists():
        result.metrics["annotations_complete"] = bool(
            json.loads(run_state.read_text()).get("complete", False)
        )
    write_metrics(out / "analysis.json", result.metrics)
    write_csv(out / "analysis_tags.csv", result.tags, TAG_COLUMNS)
    write_csv(out / "analysis_pairs.csv", result.pairs, PAIR_COLUMNS)
    note = "rule-based estimate, not learned" if RULES in songs.estimator else songs.estimator
    plot_by_tag(
        result.plot_groups,
        out / "analysis_by_tag.png",
        f"{folder.name}: {len(songs.md5)} songs ({note})",
        songs.values,
    )
    rows = curve_rows(folder, example_songs(songs, meta, p.examples), meta)
    write_csv(
        out / "analysis_curves.csv",
        rows,
        ["piece", "md5", "bar", "estimator", "valence", "arousal"],
    )
    plot_curves(rows, out / "analysis_curves.png", f"example songs ({note})")
    log.info("analysed %d songs from %s (%s)", len(songs.md5), folder, songs.estimator)
    return result.metrics
