"""The composer judge of stages 09 and 13 (issue 15): which model judges, its accuracy on real
held-out excerpts beside chance, `_counts`, and what it skips on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import symusic

from midipipe.evaluation import generated as ev
from midipipe.evaluation import judge as J
from midipipe.tokens.remi import encode, make_tokenizer
from tests.conftest import build_midi

COMPOSERS = [("alpha", 1), ("beta", 2), ("gamma", 3)]
STYLE = {1: {"pitch": 48, "numerator": 4}, 2: {"pitch": 76, "numerator": 3}, 3: {"pitch": 62}}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def pieces(tok, cid: int, n: int, guidance: float | None = None) -> list[ev.Piece]:
    out = []
    for k in range(n):
        midi = build_midi(n_bars=2 + k % 3, tempo=100.0 + 10 * k, **STYLE[cid])
        ids = encode(tok, symusic.Score.from_midi(midi))[0].tolist()
        out.append(ev.Piece(ids, cid, guidance))
    return out


def test_a_judge_that_tells_composers_apart_counts(tok, tmp_path):
    train = pieces(tok, 1, 6) + pieces(tok, 2, 6)
    held_out = pieces(tok, 1, 3) + pieces(tok, 2, 3)
    gen = pieces(tok, 1, 2, 1.0) + pieces(tok, 2, 2, 1.0) + pieces(tok, 1, 2, 3.0)
    gen += pieces(tok, 1, 2, 3.0)[:1]  # beta's take at 3.0 "sounds like" alpha
    gen[-1].composer_id = 2
    judge = J.make_judge(tok, COMPOSERS[:2], train, [], tmp_path / "no_stage05")
    assert judge.model == J.FITTED and judge.train_excerpts == 12
    png = tmp_path / "confusion.png"
    out = J.judge_conditioning(tok, judge, gen, held_out, COMPOSERS[:2], 2.0, png)
    assert out["judge_real_acc"] == 1.0 and out["chance"] == 0.5 and out["judge_ratio"] == 2.0
    assert out["judge_counts"] is True and out["g1.0_cond_acc_counts"] is True
    assert out["g1.0_cond_acc"] == 1.0 and out["g3.0_cond_acc"] == pytest.approx(2 / 3)
    assert out["g1.0_cond_acc_p"] < out["g3.0_cond_acc_p"]
    assert png.stat().st_size > 1000 and png.with_suffix(".csv").read_text().count("\n") == 5
    strict = J.judge_conditioning(tok, judge, gen, held_out, COMPOSERS[:2], 3.0)
    assert strict["judge_counts"] is False and strict["g3.0_cond_acc_counts"] is False


def test_a_composer_without_held_out_excerpts_is_skipped_and_named(tok):
    train = pieces(tok, 1, 4) + pieces(tok, 2, 4) + pieces(tok, 3, 4)
    held_out = pieces(tok, 1, 2) + pieces(tok, 2, 2)  # none of gamma
    gen = [p for cid in (1, 2, 3) for p in pieces(tok, cid, 2)]
    judge = J.make_judge(tok, COMPOSERS, train, [], None)
    out = J.judge_conditioning(tok, judge, gen, held_out, COMPOSERS, 2.0)
    assert out["judge_composers"] == "alpha,beta" and out["composers_evaluated"] == 2
    assert out["judge_skipped"] == "gamma (no held-out excerpt)"
    assert out["chance"] == 0.5 and out["judge_real_excerpts"] == 4
    assert 0 <= out["cond_acc"] <= 1  # gamma's takes are not judged


def test_fewer_than_two_composers_say_so(tok, tmp_path):
    one = J.make_judge(tok, COMPOSERS[:1], pieces(tok, 1, 3), [], None)
    assert one is None
    png = tmp_path / "c.png"
    out = J.judge_conditioning(tok, one, pieces(tok, 1, 1, 1.0), [], COMPOSERS[:1], 2.0, png)
    assert "fewer than 2 frequent composers" in out["note"] and "g1.0_cond_acc" not in out
    assert png.exists() and png.with_suffix(".csv").read_text() == "actual,predicted\n"
    judge = J.make_judge(tok, COMPOSERS[:2], pieces(tok, 1, 3) + pieces(tok, 2, 3), [], None)
    out = J.judge_conditioning(tok, judge, [], pieces(tok, 1, 2), COMPOSERS[:2], 2.0)
    assert "1 composer(s) with held-out excerpts" in out["note"] and "judge_real_acc" not in out
    assert out["judge_skipped"] == "beta (no held-out excerpt)"


def test_stage05_on_another_label_is_not_the_judge(tok, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"label": "period", "kind": "phrase"}))
    assert J.served_judge(tmp_path, COMPOSERS) is None
    judge = J.make_judge(tok, COMPOSERS[:2], pieces(tok, 1, 3) + pieces(tok, 2, 3), [], tmp_path)
    assert judge.model == J.FITTED


def test_the_better_on_valid_excerpts_judges(tok, monkeypatch):
    """Stage 05's model judges unless one fitted on excerpts does better on valid ones."""
    always_alpha = J.Judge("stage 05 (always alpha)", COMPOSERS[:2], lambda s: np.array([1.0, 0]))
    monkeypatch.setattr(J, "served_judge", lambda folder, composers: always_alpha)
    train = pieces(tok, 1, 4) + pieces(tok, 2, 4)
    valid = pieces(tok, 1, 2) + pieces(tok, 2, 2)
    judge = J.make_judge(tok, COMPOSERS[:2], train, valid, None)
    assert judge.model == J.FITTED and "stage 05 (always alpha) 0.500" in judge.choice
    assert f"{J.FITTED} 1.000" in judge.choice
    judge = J.make_judge(tok, COMPOSERS[:2], train, valid[:2], None)  # alpha's alone
    assert judge is always_alpha and "too few valid excerpts" in judge.choice
