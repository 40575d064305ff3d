"""`dvc repro` end to end on small subsets of the real corpora, with only `data.sources` changed
(and the tiny model params of test_dvc_workflow): a stage with nothing to learn says so in its
metrics and the DAG goes on. Slow: one corpus took 3 min (Nottingham, alone) to 14 min (EMOPIA,
beside other jobs) on the shared 2 cores."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_workflow import clone_project, ran, run

N_FILES = 30


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _spread(files: list[Path], n: int = N_FILES) -> list[Path]:
    """n files spread over the sorted list, so each subset mixes labels (dance types, ...)."""
    step = max(1, len(files) // n)
    return files[::step][:n]


def subset(corpus: str, data: Path, out: Path) -> list[dict]:
    """A ~30-file copy of one corpus of ../shared/datasets in `out`, and its `data.sources`."""
    src = data / corpus
    if corpus in ("nottingham", "pop909"):
        for f in _spread(sorted(src.rglob("*.mid"))):
            _copy(f, out / f.relative_to(src))
        return [{"kind": "folder", "name": corpus, "path": str(out), "composer_from": "none"}]
    if corpus == "emopia":
        for f in _spread(sorted((src / "midis").glob("*.mid"))):
            _copy(f, out / "midis" / f.name)
        for f in (src / "split").glob("*.csv"):
            _copy(f, out / "split" / f.name)
        return [{"kind": "emopia", "name": corpus, "path": str(out)}]
    if corpus == "vgmidi":
        for f in _spread(sorted((src / "midi").glob("*.mid"))):
            _copy(f, out / "midi" / f.name)
        for rel in ("vgmidi_labelled.csv", "annotations/vgmidi_raw_1.json"):
            _copy(src / rel, out / rel)
        _copy(src / "annotations/vgmidi_raw_2.json", out / "annotations/vgmidi_raw_2.json")
        return [{"kind": "vgmidi", "name": corpus, "path": str(out)}]
    if corpus == "asap":  # whole works (score + performances) of several composers
        with (src / "metadata.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        by_work: dict[str, list[dict]] = {}
        for row in rows:
            by_work.setdefault(row["folder"], []).append(row)
        kept, files = [], set()
        for work in _spread(sorted(by_work), 24):
            for row in by_work[work][:2]:
                kept.append(row)
                files |= {row["midi_performance"], row["midi_score"]}
        for rel in files:
            _copy(src / rel, out / rel)
        with (out / "metadata.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        return [
            {
                "kind": "folder",
                "name": corpus,
                "path": str(out),
                "composer_from": "csv",
                "metadata_csv": "metadata.csv",
                "path_column": ["midi_performance", "midi_score"],
                "song_column": "folder",
            }
        ]
    raise ValueError(corpus)


def repro_on(corpus: str, data: Path, base: Path) -> Path:
    """A project clone whose `data.sources` is a subset of `corpus`, after `dvc repro`."""
    sources = subset(corpus, data, base / "corpus")
    repo = clone_project(base / "repo", base / "corpus")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["sources"] = sources
    params["genre"]["label"] = "auto"  # the default, which clone_project sets to composer
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "commit", "-qam", f"data.sources: {corpus}")
    out = run(repo, "dvc", "repro")
    assert ran(out) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    return repo


def metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["nottingham", "emopia"])
def test_dvc_repro_on_a_real_corpus(corpus, external_data, tmp_path):
    """Nottingham has no label but its dance types' file names: the genre stage either finds
    none and skips, saying why, or learns; EMOPIA's only label is its emotion quadrant."""
    repo = repro_on(corpus, external_data, tmp_path)
    assert metrics(repo, "organize")["pieces"] == N_FILES
    assert metrics(repo, "tokenize")["rejects"] == 0
    genre = metrics(repo, "genre_phrase")
    if genre.get("status") == "skipped":
        assert genre["reason"]
    else:
        assert genre["label"] == ("emotion" if corpus == "emopia" else "source")
    for name in ("generator", "vae", "emotion", "genre_hier", "generation", "vae_generation"):
        got = metrics(repo, name)
        assert got.get("status") != "skipped" or got["reason"], name
