"""Stage 04: MuseTok tokens + models/musetok -> data/latents/ (per-bar latents and codes)."""

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from midipipe import params
from midipipe.latents import REPRESENTATIONS, LatentWriter
from midipipe.logs import run_main
from midipipe.musetok import checkpoint
from midipipe.musetok.encode import encode_pieces
from midipipe.params import ParamError
from midipipe.shards import write_json
from midipipe.training import resolve_device

log = logging.getLogger("midipipe.stage04")


@dataclass
class LatentParams:
    representation: str = "quantized"  # quantized | encoder_out (codes are always written)
    batch_size: int = 256  # bars per forward pass, filled across pieces
    pieces_per_part: int = 2048
    device: str = "auto"


def main() -> None:
    p = params.build(LatentParams, params.section("params.yaml", "latents"), "latents")
    if p.representation not in REPRESENTATIONS:
        raise ParamError(
            f"latents.representation must be one of {REPRESENTATIONS}, got {p.representation!r}"
        )
    model = checkpoint.load("models/musetok").to(resolve_device(p.device)).eval()
    shutil.rmtree("data/latents", ignore_errors=True)
    writer = LatentWriter(
        "data/latents", p.pieces_per_part, metadata={"representation": p.representation}
    )
    stats = {"pieces": 0, "skipped_no_bars": 0, "bars": 0, "bars_truncated": 0}
    parts = sorted(Path("data/tokens/musetok").glob("part-*.parquet"))
    with torch.inference_mode(), tqdm(desc="latents", unit="piece") as bar:
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
    write_json("metrics/latents.json", {**stats, "representation": p.representation})


if __name__ == "__main__":
    run_main(main)
