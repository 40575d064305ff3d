"""The DVC workflow a team relies on, run for real on a tiny corpus in a temporary copy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from benchmarks.common import copy_project
from midipipe.cli.configs import resolved
from midipipe.data.midi import piece_id
from midipipe.data.store import META_COLUMNS, Corpus, iter_batches
from tests.conftest import build_midi

ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
    "DVC_NO_ANALYTICS": "1",
}


def run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def make_corpus(folder: Path) -> None:
    for c, (composer, n) in enumerate((("bach", 6), ("mozart", 5), ("ives", 2))):
        for i in range(n):
            path = folder / composer / f"{composer}_{i}.mid"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(build_midi(n_bars=4 + i, pitch=48 + 6 * c + i))
    # the same bytes under another name: organize keeps one copy
    (folder / "ives" / "copy.mid").write_bytes((folder / "bach" / "bach_0.mid").read_bytes())


def clone_project(dst: Path, corpus: Path) -> Path:
    """The repo's tracked files in a fresh git repo, with params pointed at a tiny corpus."""
    copy_project(dst)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["data"]["sources"] = [
        {"kind": "folder", "name": "lab", "path": str(corpus), "composer_from": "subfolder"}
    ]
    params["composers"]["min_pieces"] = 5
    params["organize"]["workers"] = params["tokenize"]["workers"] = 2
    # every model tiny: this checks the workflow, not the models
    params["musetok"].update(dec_seqlen=128, max_bars=4)
    params["musetok"]["train"].update(epochs=1, batch_size=8)
    params["genre"].update(label="composer", min_class_pieces=1, max_phrases_per_piece=2)
    params["genre"]["train"].update(epochs=1)
    params["genre_hier"].update(min_tag_pieces=1, max_chunks=2)
    params["genre_hier"]["train"].update(epochs=1)
    params["emotion"].update(folds=2)
    params["generator"].update(context=64, max_windows=8, eval_windows=4)
    params["generator"]["train"].update(epochs=1, batch_size=8)
    params["generate"].update(pieces_per_composer=1, max_tokens=32)
    params["vae"].update(window=48, max_windows=8, eval_windows=4)
    params["vae"]["train"].update(epochs=1)
    params["vae"]["model"].update(d_model=32, d_ff=64, d_latent=8)
    params["generate_vae"].update(
        pieces_per_composer=1, max_tokens=32, real_chunks_per_piece=1, latent_windows_per_piece=1
    )
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dst, "git", "init", "-q", "-b", "main")
    run(dst, "git", "add", "-A")
    run(dst, "git", "commit", "-qm", "init")
    return dst


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def stage_status(project: Path) -> dict[str, str]:
    """`dvc status`, as {stage: the lines that say what changed in it}."""
    blocks: dict[str, str] = {}
    stage = None
    for line in run(project, "dvc", "status").splitlines():
        if line.strip().endswith(":") and not line.startswith("\t"):
            stage = line.rstrip(":").strip()
            blocks[stage] = ""
        elif stage:
            blocks[stage] += line.strip() + "\n"
    return blocks


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("dvc")
    make_corpus(base / "corpus")
    repo = clone_project(base / "repo", base / "corpus")
    out = run(repo, "dvc", "repro")
    assert ran(out) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "repro")
    return repo


def test_outputs_follow_the_contracts(project):
    manifest = pq.read_table(project / "data/manifest.parquet").to_pylist()
    assert len(manifest) == 13 and not (project / "data/midi").exists()
    corpus = Corpus(project / "data/corpus", project / "data/manifest.parquet")
    stored = {
        r["md5"]: r
        for b in iter_batches(project / "data/corpus", META_COLUMNS)
        for r in b.to_pylist()
    }
    assert len(stored) == 13
    for row in manifest:
        assert piece_id(corpus.music(row["piece_id"])) == row["piece_id"]
        assert row["original"].startswith(f"{row['composer']}/")
        assert row["split"] in {"train", "valid", "test"}
        assert stored[row["piece_id"]]["artist"] == row["composer"]
    table = json.loads((project / "data/composers.json").read_text())
    assert [(c["name"], c["id"]) for c in table["composers"]] == [("bach", 1), ("mozart", 2)]
    assert table["other_id"] == 3
    tokens = pq.read_table(project / "data/tokens/remi/part-00000.parquet")
    assert tokens.num_rows == 13 and tokens.schema.field("ids").type.value_type.bit_width == 32


def test_second_repro_is_a_noop(project):
    assert ran(run(project, "dvc", "repro")) == set()


def test_param_change_reruns_only_its_stage(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["composers"]["min_pieces"] = 6  # read by bucket_composers alone
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = stage_status(project)
    # only the stage that reads the param is out of date (the generator stages only follow
    # if composers.json itself changes)
    assert set(status) == {"bucket_composers"}, status
    run(project, "dvc", "repro", "bucket_composers")
    table = json.loads((project / "data/composers.json").read_text())
    assert [c["name"] for c in table["composers"]] == ["bach"]
    run(project, "git", "checkout", "-q", "params.yaml")
    run(project, "dvc", "checkout", "-q")
    assert ran(run(project, "dvc", "repro")) == set()


# every stage that trains a model: its metrics file, its dvc stage, and the params section whose
# `train:` it reads
TRAINED = {
    "musetok": ("train_musetok", "musetok"),
    "genre_phrase": ("train_genre", "genre"),
    "genre_hier": ("train_genre_hier", "genre_hier"),
    "generator": ("train_generator", "generator"),
    "vae": ("train_vae", "vae"),
}


def learning_rates(project: Path) -> dict[str, float]:
    return {
        name: json.loads((project / "metrics" / f"{name}.json").read_text())["lr"]
        for name in TRAINED
    }


def expected_lrs(project: Path, base_lr: float) -> dict[str, float]:
    """Each trained model's lr when `train.lr` is `base_lr`: its `lr_scale` (the profile's when
    null) times `base_lr`, or its own `lr` where set."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    profiled = resolved(str(project / "params.yaml"))  # null keys: the profile's values
    out = {}
    for name, (_, section) in TRAINED.items():
        own = params[section].get("train") or {}
        if own.get("lr") is not None:
            out[name] = own["lr"]
            continue
        scale = own.get("lr_scale", 1.0)
        if scale is None:
            scale = profiled[section]["train"]["lr"] / params["train"]["lr"]
        out[name] = base_lr * scale
    return out


def test_train_lr_is_a_param_of_every_trained_model(project):
    """What `dvc exp run -S train.lr=1e-4` relies on, without retraining every model (the slow
    test below does): each model trained at the lr its params give, and a new `train.lr` puts
    every training stage out of date on that param."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    got = learning_rates(project)
    assert got == pytest.approx(expected_lrs(project, params["train"]["lr"]))
    params["train"]["lr"] = 1e-4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    moved = expected_lrs(project, 1e-4)
    try:
        status = stage_status(project)
    finally:
        run(project, "git", "checkout", "-q", "params.yaml")
    for name, (stage, _) in TRAINED.items():
        assert moved[name] != got[name], name
        assert re.search(r"modified:\s+train\n", status.get(stage, "")), (stage, status)


def test_exp_run_moves_the_generator_alone_metrics_diff_and_plots(project):
    """A real `dvc exp run`: the generator's own lr re-runs it (and what reads its model) at
    that lr, every other model keeps its own; then exp show, metrics diff and plots."""
    before = learning_rates(project)
    out = run(
        project,
        "dvc", "exp", "run",
        "-S", "generator.train.lr=0.002",
        "-S", "composers.min_pieces=5",
    )  # fmt: skip
    assert "Ran experiment" in out or "Experiment" in out
    assert ran(out) >= {"train_generator"}
    assert not ran(out) & {stage for stage, _ in TRAINED.values()} - {
        "train_generator",
        "train_genre_hier",  # reads the generator's model
    }
    after = learning_rates(project)
    assert after["generator"] == pytest.approx(0.002) != before["generator"]
    assert {k: v for k, v in after.items() if k != "generator"} == {
        k: v for k, v in before.items() if k != "generator"
    }
    assert "generator.train.lr" in run(project, "dvc", "exp", "show", "--no-pager", "--csv")
    diff = run(project, "dvc", "metrics", "diff", "--all")
    assert "metrics/tokenize.json" in diff and "metrics/generator.json" in diff
    run(project, "dvc", "plots", "show", "-o", "plots_html")
    assert (project / "plots_html" / "index.html").is_file()


@pytest.mark.slow
def test_exp_run_train_lr_retrains_every_model(project):
    """`dvc exp run -S train.lr=1e-4` for real: every model retrains at its scale of it, and the
    generator's own lr set beside it holds for the generator alone (re-runs ~every stage)."""
    before = learning_rates(project)
    expected = expected_lrs(project, 1e-4)
    out = run(
        project,
        "dvc", "exp", "run",
        "-S", "train.lr=1e-4",
        "-S", "generator.train.lr=0.0025",
        "-S", "composers.min_pieces=5",
    )  # fmt: skip
    assert "Ran experiment" in out or "Experiment" in out
    after = learning_rates(project)
    assert after["generator"] == pytest.approx(0.0025) != before["generator"]
    for name in TRAINED:
        if name == "generator":
            continue
        assert after[name] != before[name], name
        assert after[name] == pytest.approx(expected[name]), name
    assert "train.lr" in run(project, "dvc", "exp", "show", "--no-pager", "--csv")


def test_remote_push_pull_into_a_second_clone(project, tmp_path):
    remote = tmp_path / "remote"
    run(project, "dvc", "remote", "add", "-d", "team", str(remote))
    run(project, "dvc", "push")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "remote")
    second = tmp_path / "second"
    run(tmp_path, "git", "clone", "-q", str(project), str(second))
    run(second, "dvc", "pull")
    # identical outputs, and nothing to recompute
    for rel in (
        "data/manifest.parquet",
        "data/tokens/remi/part-00000.parquet",
        "data/composers.json",
    ):
        assert (second / rel).read_bytes() == (project / rel).read_bytes()
    assert ran(run(second, "dvc", "repro")) == set()


def test_added_files_are_parsed_alone_and_flow_downstream(project):
    """Sources are not DVC deps (hashing millions of files on every status would cost more than
    it saves): after adding files, `dvc repro -f organize` parses only the new md5s."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    source = Path(params["data"]["sources"][0]["path"])
    (source / "ives" / "new.mid").write_bytes(build_midi(n_bars=9, pitch=40))
    before = {p.name: p.stat().st_mtime_ns for p in (project / "data/corpus").glob("part-*")}
    run(project, "dvc", "repro", "-f", "organize")
    metrics = json.loads((project / "metrics/organize.json").read_text())
    assert metrics["parsed"] == 1 and metrics["reused"] == 13 and metrics["pieces"] == 14
    after = {p.name: p.stat().st_mtime_ns for p in (project / "data/corpus").glob("part-*")}
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1
    assert "tokenize" in run(project, "dvc", "status")
