"""Stage 04: MuseTok tokens + models/musetok -> data/latents/ (per-bar latents and codes)."""

from midipipe.core import params
from midipipe.core.io import write_json
from midipipe.core.logs import run_main
from midipipe.musetok.latents import LatentParams, extract_latents


def main() -> None:
    p = params.build(LatentParams, params.section("params.yaml", "latents"), "latents")
    stats = extract_latents(p, "models/musetok", "data/tokens/musetok", "data/latents")
    write_json("metrics/latents.json", stats)


if __name__ == "__main__":
    run_main(main)
