"""Stage 10's params (`annotate:` in params.yaml) and GigaMIDI's metadata columns."""

from __future__ import annotations

from dataclasses import dataclass, field

from midipipe.core.errors import ParamError
from midipipe.data.store import INSTRUMENT_COLUMN

STYLE_COLUMNS = (
    "music_styles_curated",
    "music_style_scraped",
    "music_style_audio_text_Discogs",
    "music_style_audio_text_Lastfm",
    "music_style_audio_text_Tagtraum",
)
META_COLUMNS = ("split", "title", "artist", *STYLE_COLUMNS, INSTRUMENT_COLUMN, "NOMML")


@dataclass
class AnnotateParams:
    """`annotate:` section of params.yaml (stage 10)."""

    name: str = "music21"  # output folder data/annotations/<name>/
    parquet: str | list[str] | None = "data/corpus"  # local GigaMIDI-schema Parquet (or None)
    hf_name: str | None = None  # e.g. Metacreation/GigaMIDI, streamed (then parquet: null)
    hf_config: str | None = "v2.0.0"  # GigaMIDI version (v3.0.0 when released)
    revision: str | None = None  # hub commit/tag, for a reproducible stream
    splits: list[str] = field(default_factory=lambda: ["train", "validation", "test"])
    stream_workers: int = 4  # hub streaming: processes reading the config's shards in parallel
    limit: int | None = None  # stream rows to cover (done ones count), None = all
    engine: str = "local"  # local | ray
    musetok: str = "models/musetok"
    emotion: str = "models/emotion"
    device: str = "auto"  # encoder and MLP device (local engine)
    torch_threads: int = 0  # encoder/MLP threads (0 = torch's default); 1 on a busy CPU
    workers: int = 0  # parse/events processes, 0 = one per CPU core
    timeout_s: float = 60.0  # per song: a hanging parser becomes a failed song
    songs_per_part: int = 512  # songs per committed chunk: the unit of resume
    part_bars: int = 200_000  # ... or fewer songs when they hold this many bars
    batch_size: int = 256  # encoder pass: bars of typical length (32 tokens), packed by length
    read_batch: int = 64  # Parquet rows decoded at a time (ray: rows per actor call)
    max_notes: int = 1_000_000  # larger files fail (memory bound)
    meta_columns: list[str] = field(default_factory=lambda: list(META_COLUMNS))
    ray_actors: int = 2  # ray: model actors
    ray_workers: int = 1  # ray: parse processes per actor (isolation: timeout, crash)
    ray_cpus: int = 0  # ray: CPUs for a local cluster (0 = all); ignored when one is running
    num_gpus: float = 0.0  # ray: GPUs per actor
    projection_songs: int = 2_100_000  # songs in GigaMIDI v2 (extended): for projected_hours

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ParamError(f"annotate.engine must be local or ray, got {self.engine!r}")
        if (self.parquet is None) == (self.hf_name is None):
            raise ParamError("annotate: set exactly one of parquet (local files) or hf_name (hub)")
        if self.limit is not None and self.limit < 0:
            raise ParamError(f"annotate.limit must be >= 0 or null, got {self.limit}")
        for key in ("songs_per_part", "part_bars", "batch_size", "read_batch", "ray_workers"):
            if getattr(self, key) < 1:
                raise ParamError(f"annotate.{key} must be >= 1, got {getattr(self, key)}")
        if self.timeout_s <= 0:
            raise ParamError(f"annotate.timeout_s must be > 0, got {self.timeout_s}")

    def result_params(self) -> dict:
        """The params that change what a song's annotation is (the resume fingerprint's)."""
        return {
            "max_notes": self.max_notes,
            "timeout_s": self.timeout_s,
            "meta_columns": list(self.meta_columns),
        }
