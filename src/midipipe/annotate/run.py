"""Stage 10's entry point: the configured engine annotates the configured rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from midipipe.annotate.params import AnnotateParams
from midipipe.annotate.report import Report


def annotate(
    p: AnnotateParams,
    out_dir: str | Path,
    rows: Iterable[dict] | None = None,
    progress: bool = True,
) -> Report:
    """Annotate the configured rows (or `rows`, local engine only) into `out_dir`, resuming."""
    if p.engine == "ray":
        from midipipe.annotate.ray_engine import annotate_ray  # Ray only when asked for

        return annotate_ray(p, out_dir, progress=progress)
    from midipipe.annotate.local_engine import annotate_local

    return annotate_local(p, out_dir, rows=rows, progress=progress)
