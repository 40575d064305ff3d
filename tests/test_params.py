"""params.yaml views: the repo's file loads, and mistakes are named by their dotted key."""

from pathlib import Path

import pytest
import yaml

from midipipe.core import params
from midipipe.tokens import remi

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_load():
    p = params.load(ROOT / "params.yaml")
    assert p.composers.min_pieces == 10
    assert p.data.sources[0]["kind"] == "music21"
    remi.tokenizer_config(p.tokenize.remi)  # the tokenizer config in params is valid


def test_unknown_key_and_wrong_type_are_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tokenize": {"wokers": 2}}))
    with pytest.raises(params.ParamError, match=r"tokenize\.wokers: unknown key"):
        params.load(path)
    path.write_text(yaml.safe_dump({"composers": {"min_pieces": "ten"}}))
    with pytest.raises(params.ParamError, match=r"composers\.min_pieces: expected int"):
        params.load(path)
    with pytest.raises(params.ParamError, match=r"tokenize\.remi\.bogus"):
        remi.tokenizer_config({"bogus": 1})


def test_train_overrides_merge():
    p = params.Params()
    merged = params.merged_train(p, {"lr": 1e-4, "epochs": 2})
    assert merged.lr == 1e-4 and merged.epochs == 2 and merged.seed == p.train.seed
