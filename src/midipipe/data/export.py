"""The corpus store as folders of MIDI files (`midipipe export`), for people and tools that
want loose files: `DIR/<composer>/<title>.mid`, or grouped by source or split."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from midipipe.core.io import write_bytes
from midipipe.data.sources.names import slug
from midipipe.data.store import Corpus

log = logging.getLogger(__name__)

GROUPS = ("composer", "source", "split")


def file_names(rows: list[dict], by: str) -> dict[str, str]:
    """piece id -> `<group>/<title>.mid`, every part slugged (no path can leave the folder);
    a title taken twice in one group gets the piece id's first 8 digits."""
    if by not in GROUPS:
        raise ValueError(f"--by must be one of {', '.join(GROUPS)}, not {by!r}")
    taken: set[str] = set()
    out = {}
    for r in sorted(rows, key=lambda r: r["piece_id"]):
        group = slug(r.get(by) or "") or "unknown"
        title = slug(Path(r.get("original") or "").stem) or r["piece_id"][:8]
        name = f"{group}/{title}.mid"
        if name in taken:
            name = f"{group}/{title}-{r['piece_id'][:8]}.mid"
        taken.add(name)
        out[r["piece_id"]] = name
    return out


def export(data_dir: str | Path, out_dir: str | Path, by: str = "composer") -> int:
    """Write every piece of the store under `data_dir` to `out_dir` (each file atomically);
    returns how many."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = data_dir / "manifest.parquet"
    columns = ["piece_id", "original", *dict.fromkeys(GROUPS)]
    names = file_names(pq.read_table(manifest, columns=columns).to_pylist(), by)
    corpus = Corpus(data_dir / "corpus", manifest)
    order = corpus.in_store_order()  # each row group read once
    for pid, data in tqdm(
        zip(order, corpus.iter_music(order), strict=True),
        total=len(order),
        desc="export",
        unit="file",
    ):
        write_bytes(out_dir / names[pid], data)
    log.info("exported %d pieces to %s by %s", len(order), out_dir, by)
    return len(order)
