"""Stage 04's output contract: per-bar latents in safetensors parts plus a Parquet index.

Each part holds `latents` [bars, D] float32, `codes` [bars, levels] int64 and `offsets`
[pieces+1] int64 (piece k's bars are rows offsets[k]:offsets[k+1]); `index.parquet` maps
piece_id -> part, start, n_bars. Parts are written atomically as they fill.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

from midipipe.core.device import inference_mode, resolve_device
from midipipe.core.errors import ParamError
from midipipe.core.io import atomic_path, part_files, write_rows
from midipipe.musetok import checkpoint
from midipipe.musetok.encode import encode_pieces

log = logging.getLogger(__name__)

REPRESENTATIONS = ("quantized", "encoder_out")

INDEX_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("part", pa.string()),
        ("start", pa.int64()),
        ("n_bars", pa.int64()),
        ("n_truncated", pa.int32()),
    ]
)


class LatentWriter:
    def __init__(
        self,
        folder: str | Path,
        pieces_per_part: int = 2048,
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pieces_per_part = pieces_per_part
        self.metadata = metadata or {}
        self.index: list[dict] = []
        self._reset()
        self.n_parts = 0

    def _reset(self) -> None:
        self.latents: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []
        self.ids: list[tuple[str, int]] = []

    def add(self, piece_id: str, latents: np.ndarray, codes: np.ndarray, n_truncated: int) -> None:
        self.latents.append(latents.astype(np.float32, copy=False))
        self.codes.append(codes.astype(np.int64, copy=False))
        self.ids.append((piece_id, n_truncated))
        if len(self.ids) >= self.pieces_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        name = f"part-{self.n_parts:05d}.safetensors"
        lengths = [len(x) for x in self.latents]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tensors = {
            "latents": np.concatenate(self.latents),
            "codes": np.concatenate(self.codes),
            "offsets": offsets,
        }
        with atomic_path(self.folder / name) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata)
        for k, (pid, n_trunc) in enumerate(self.ids):
            self.index.append(
                {
                    "piece_id": pid,
                    "part": name,
                    "start": int(offsets[k]),
                    "n_bars": lengths[k],
                    "n_truncated": n_trunc,
                }
            )
        self.n_parts += 1
        self._reset()

    def close(self) -> None:
        self.flush()
        write_rows(self.folder / "index.parquet", self.index, INDEX_SCHEMA)


def read_piece(folder: str | Path, part: str, start: int, n_bars: int) -> dict[str, torch.Tensor]:
    """One piece's rows (for tools; training reads whole parts)."""
    tensors = load_file(str(Path(folder) / part))
    return {k: tensors[k][start : start + n_bars] for k in ("latents", "codes")}


def iter_parts(folder: str | Path) -> Iterable[tuple[str, dict[str, torch.Tensor]]]:
    for path in sorted(Path(folder).glob("part-*.safetensors")):
        yield path.name, load_file(str(path))


@dataclass
class LatentParams:
    """`latents:` section of params.yaml (stage 04)."""

    representation: str = "quantized"  # quantized | encoder_out (codes are always written)
    batch_size: int = 256  # bars per forward pass, filled across pieces
    pieces_per_part: int = 2048
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast (+ TF32) on CUDA, fp32 on CPU | fp32 | bf16


def extract_latents(
    p: LatentParams, model_dir: str | Path, tokens_dir: str | Path, out_dir: str | Path
) -> dict:
    """Encode every piece of the MuseTok token shards into `out_dir`; returns the counts."""
    from tqdm import tqdm

    if p.representation not in REPRESENTATIONS:
        raise ParamError(
            f"latents.representation must be one of {REPRESENTATIONS}, got {p.representation!r}"
        )
    device = resolve_device(p.device)
    model = checkpoint.load(model_dir).to(device).eval()
    shutil.rmtree(out_dir, ignore_errors=True)
    writer = LatentWriter(out_dir, p.pieces_per_part, metadata={"representation": p.representation})
    stats = {"pieces": 0, "skipped_no_bars": 0, "bars": 0, "bars_truncated": 0}
    parts = part_files(tokens_dir)
    with inference_mode(device, p.precision), tqdm(desc="latents", unit="piece") as bar:
        for part in parts:  # one token part in memory at a time
            rows = pq.read_table(part).to_pylist()
            stats["skipped_no_bars"] += sum(not r["bar_starts"] for r in rows)
            rows = [r for r in rows if r["bar_starts"]]
            encoded = encode_pieces(
                model, ((r["ids"], r["bar_starts"]) for r in rows), p.batch_size
            )
            for row, out in zip(rows, encoded, strict=True):
                vectors = out.latents if p.representation == "quantized" else out.encoder_out
                writer.add(row["piece_id"], vectors, out.codes, out.n_truncated)
                stats["pieces"] += 1
                stats["bars"] += len(out.codes)
                stats["bars_truncated"] += out.n_truncated
                bar.update()
    writer.close()
    return {**stats, "representation": p.representation}
