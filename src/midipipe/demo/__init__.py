"""`midipipe demo`: a local Gradio page over the models the DAG trained (classify, chart,
generate, listen). This module holds the params only, so the command line imports it without
Gradio or torch; `app` builds the page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from midipipe.core.params import build, require, section


@dataclass
class DemoParams:
    """`demo:` section of params.yaml (no stage reads it; `midipipe demo` and app.py do)."""

    max_upload_mb: float = 20.0  # the server refuses larger uploads
    max_notes: int = 200_000  # a file with more notes is refused before any model runs
    top_k: int = 5  # classes shown per chart
    max_tokens: int = 1024  # the longest generation the Generate tab offers
    sample_rate: int = 22050  # audio preview, Hz

    def __post_init__(self) -> None:
        require(
            self,
            "demo",
            [
                (self.max_upload_mb > 0, "max_upload_mb", "> 0"),
                (self.max_notes > 0, "max_notes", "> 0"),
                (self.top_k >= 1, "top_k", ">= 1"),
                (self.max_tokens >= 16, "max_tokens", ">= 16"),
                (8000 <= self.sample_rate <= 48000, "sample_rate", "in [8000, 48000]"),
            ],
        )


def load_params(path: str | Path = "params.yaml") -> DemoParams:
    """The `demo:` section, or the defaults when there is no params file (a hosted Space)."""
    return build(DemoParams, section(path, "demo"), "demo") if Path(path).exists() else DemoParams()
