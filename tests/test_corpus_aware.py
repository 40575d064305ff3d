"""Corpus-aware stages: `genre.label: auto` picks a label the corpus has, and a stage with
nothing to learn writes `status: skipped` with the reason and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import midipipe
from midipipe.core.errors import NothingToLearn
from midipipe.core.reports import Skip, skipped_reason
from midipipe.genre.labels import choose_label, learnable_classes, splits_in_use

# the stage scripts run as subprocesses must import this checkout's package
ENV = {**os.environ, "PYTHONPATH": str(Path(midipipe.__file__).resolve().parents[1])}


def manifest(spec: list[tuple[str, str, str | None, str | None]]) -> dict[str, dict]:
    """Rows from (song, split, composer, emotion)."""
    return {
        f"p{i}": {
            "piece_id": f"p{i}",
            "song_id": song,
            "split": split,
            "composer": composer,
            "emotion": emotion,
            "genres": [],
            "period": None,
            "source": "lab",
        }
        for i, (song, split, composer, emotion) in enumerate(spec)
    }


def test_auto_takes_the_first_label_with_two_learnable_classes():
    rows = manifest(
        [(f"s{i}", "train", None, "Q1" if i % 2 else "Q3") for i in range(8)]
        + [("t0", "test", None, "Q1"), ("t1", "test", None, "Q3")]
    )
    choice = choose_label(rows, "auto", min_class_pieces=2)
    assert choice.label == "emotion" and choice.classes == {"Q1": 4, "Q3": 4}
    assert "first of period/composer/genre/emotion/source" in choice.rule


def test_a_class_from_a_single_work_is_not_learnable():
    # bach: 4 train pieces, all movements of one work; mozart: two works
    rows = manifest(
        [("bwv1", "train", "bach", None)] * 4
        + [("k1", "train", "mozart", None), ("k2", "train", "mozart", None)]
    )
    assert learnable_classes(rows, "composer", 2) == {"mozart": 2}
    with pytest.raises(NothingToLearn, match="'composer': {'mozart': 2}"):
        choose_label(rows, "composer", 2)


def test_no_label_at_all_is_nothing_to_learn():
    rows = manifest([(f"s{i}", "train", None, None) for i in range(10)])
    with pytest.raises(NothingToLearn, match="no label with >= 2 classes"):
        choose_label(rows, "auto", 1)


def test_nothing_held_out_or_no_train_is_nothing_to_learn():
    with pytest.raises(NothingToLearn, match="no train phrases"):
        splits_in_use({"train": [], "valid": [1], "test": [1]}, len, "phrases", "x")
    with pytest.raises(NothingToLearn, match="nothing held out"):
        splits_in_use({"train": [1], "valid": [], "test": []}, len, "phrases", "x")
    assert splits_in_use({"train": [1], "valid": [], "test": [2]}, len, "p", "x")[1] == [1]


def test_a_skipping_stage_writes_its_outputs_and_exits_0(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "from midipipe.core.errors import NothingToLearn\n"
        "from midipipe.core.logs import run_main\n"
        "from midipipe.core.reports import Skip\n"
        "def main():\n"
        "    raise NothingToLearn('one class only')\n"
        "run_main(main, Skip('m/x.json', ('m/curve.csv', 'm/plot.png'), ('models/x',)))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "m/x.json").read_text())
    assert got == {"status": "skipped", "reason": "one class only"}
    assert (tmp_path / "m/curve.csv").read_text().startswith("status")
    assert (tmp_path / "m/plot.png").read_bytes()[:4] == b"\x89PNG"
    assert skipped_reason(tmp_path / "models/x") == "one class only"
    assert skipped_reason(tmp_path / "models/y") is None


def test_without_a_skip_spec_nothing_to_learn_is_an_error(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "from midipipe.core.errors import NothingToLearn\n"
        "from midipipe.core.logs import run_main\n"
        "def main():\n"
        "    raise NothingToLearn('x')\n"
        "run_main(main)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, env=ENV)
    assert proc.returncode != 0


def test_skip_is_plain_data():
    assert Skip("a.json").plots == () and Skip("a.json").dirs == ()


def test_the_phrase_stage_skips_a_one_class_corpus(tmp_path):
    from midipipe.core.io import write_rows
    from midipipe.core.params import TrainParams
    from midipipe.data.organize import MANIFEST_SCHEMA
    from midipipe.genre.params import GenreParams
    from midipipe.genre.phrase_train import train_phrase
    from midipipe.tokens.remi import make_tokenizer

    make_tokenizer().save(tmp_path / "tokens")
    rows = manifest([(f"s{i}", "train", "bach", None) for i in range(6)])
    write_rows(tmp_path / "manifest.parquet", list(rows.values()), MANIFEST_SCHEMA)
    with pytest.raises(NothingToLearn, match="'composer': {'bach': 6}"):
        train_phrase(
            GenreParams(),
            TrainParams(device="cpu"),
            tmp_path / "tokens",
            tmp_path / "manifest.parquet",
            tmp_path / "model",
            tmp_path / "ckpt",
        )
    assert not (tmp_path / "model").exists()
