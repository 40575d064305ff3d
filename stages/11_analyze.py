"""Stage 11: data/annotations/<name>/ + GigaMIDI metadata -> metrics/analysis.json (per-source
Kruskal-Wallis over tags, effect sizes, which estimator made the annotations),
metrics/analysis_tags.csv and analysis_pairs.csv, and the box and curve plots."""

from pathlib import Path

from midipipe.annotate.analysis import AnalyzeParams, run
from midipipe.annotate.params import AnnotateParams
from midipipe.core import params
from midipipe.core.logs import run_main


def main() -> None:
    p = params.build(AnalyzeParams, params.section("params.yaml", "analyze"), "analyze")
    name = p.name or params.section("params.yaml", "annotate").get("name") or AnnotateParams.name
    run(Path("data/annotations") / name, p)


if __name__ == "__main__":
    run_main(main)
