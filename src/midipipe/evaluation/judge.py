"""The composer judge of stages 09 (GPT) and 13 (VAE): which composer a piece sounds like,
asked of the project's best composer classifier, and how far that answer can be trusted.

Which classifier: the project's composer classifiers are stage 05's served model (the phrase
model pooled per piece, or the hand-crafted-feature model when it won on valid), when stage
05 was trained on composers, and a hand-crafted-feature logistic regression
(`features.fit_linear`) fitted here on real train-split excerpts of the evaluated composers,
as long as the generated pieces. When both exist, the one more accurate on valid-split
excerpts judges (`judge_choice`; README: on ASAP the fitted one, by far). Stage 05's label
follows the corpus (period on the embedded corpus, composer on a classical piano folder).

A conditioning accuracy means something only when the judge tells real composers apart: it
is scored on real held-out excerpts of the same length (`judge_real_acc`), divided by chance
(`judge_ratio`), and every conditioning figure carries `_counts`: whether that ratio reaches
`min_ratio`. Composers the judge does not know, or with no held-out excerpt, are left out of
the figures (`judge_skipped` says which and why); with fewer than two left nothing is judged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic
from tqdm import tqdm

from midipipe.core.io import atomic_path
from midipipe.evaluation import generated as ev
from midipipe.evaluation.confusion import write_confusion
from midipipe.evaluation.features import fit_linear, piece_features

log = logging.getLogger(__name__)

FITTED = "hand-crafted features, fitted on train-split excerpts"


@dataclass
class Judge:
    """A composer classifier over scores: `probs` gives one column per `composers` entry
    (name, id), or None for a score the model cannot classify (too short for a phrase)."""

    model: str
    composers: list[tuple[str, int]]
    probs: Callable[[symusic.Score], np.ndarray | None]
    train_excerpts: int | None = None  # what a fitted judge learned from
    choice: str = ""  # why this model (`make_judge`)

    def predict(self, tokenizer, pieces: Sequence[ev.Piece], among: Sequence[int]) -> np.ndarray:
        """The composer id each piece is judged to be, choosing only `among` those ids;
        -1 where the model cannot classify the piece."""
        cols = [i for i, (_, cid) in enumerate(self.composers) if cid in among]
        out = np.full(len(pieces), -1, dtype=int)
        for k, piece in enumerate(tqdm(pieces, desc="judge", unit="piece", leave=False)):
            probs = self.probs(ev.decode(tokenizer, piece.ids))
            if probs is not None:
                out[k] = self.composers[cols[int(np.argmax(probs[cols]))]][1]
        return out


def served_judge(
    genre_dir: str | Path | None, composers: Sequence[tuple[str, int]]
) -> Judge | None:
    """Stage 05's served model as a judge, when it was trained on composers and knows at
    least two of `composers` (matched by name); else None (said in the log)."""
    folder = Path(genre_dir) if genre_dir else None
    if folder is None or not (folder / "config.json").exists():
        return None
    label = json.loads((folder / "config.json").read_text()).get("label")
    if label != "composer":
        log.info("judge: stage 05 was trained on %r, not composer: fitting one", label)
        return None
    from midipipe.genre.predict import load_predictor  # torch models: only when used

    predictor = load_predictor("phrase", folder, "cpu")
    names = predictor.names()
    known = [(n, cid) for n, cid in composers if n in names]
    if len(known) < 2:
        log.warning("judge: stage 05 knows %d of the evaluated composers: fitting one", len(known))
        return None
    cols = [names.index(n) for n, _ in known]

    def probs(score: symusic.Score) -> np.ndarray | None:
        p, _ = predictor.score_probs(score)
        return None if p is None else p[cols]

    kind = "hand-crafted model" if predictor.served is not None else "phrase model"
    return Judge(f"stage 05 {kind} ({folder})", known, probs)


def fitted_judge(
    tokenizer, composers: Sequence[tuple[str, int]], train: Sequence[ev.Piece], seed: int = 0
) -> Judge | None:
    """A hand-crafted-feature logistic regression on the train excerpts of `composers`;
    None with fewer than two of them in `train`."""
    ids = [cid for _, cid in composers]
    keep = [p for p in train if p.composer_id in ids]
    present = [(n, cid) for n, cid in composers if any(p.composer_id == cid for p in keep)]
    if len(present) < 2:
        return None
    order = [cid for _, cid in present]
    x = np.stack(
        [
            piece_features(ev.decode(tokenizer, p.ids))
            for p in tqdm(keep, desc="judge features", unit="excerpt", leave=False)
        ]
    )
    y = np.array([order.index(p.composer_id) for p in keep])
    model = fit_linear(x, y, [n for n, _ in present], seed=seed)
    return Judge(
        FITTED, present, lambda s: model.predict_proba(piece_features(s)[None])[0], len(keep)
    )


def _accuracy(prefix: str, true: Sequence[int], pred: np.ndarray, chance: float) -> dict:
    hits = int(np.sum(np.asarray(true) == pred))
    out = {prefix: hits / len(true) if len(true) else math.nan}
    out.update({f"{prefix}_{k}": v for k, v in ev.versus_chance(hits, len(true), chance).items()})
    return out


def make_judge(
    tokenizer,
    composers: Sequence[tuple[str, int]],
    real_train: Sequence[ev.Piece],
    real_valid: Sequence[ev.Piece],
    genre_dir: str | Path | None,
    seed: int = 0,
) -> Judge | None:
    """The better on `real_valid` excerpts of stage 05's served model (when it judges
    composers) and one fitted on `real_train` excerpts: stage 05 learned whole pieces, and
    an excerpt can read differently (its length, its tempo changes); `choice` says how each
    scored. Without valid excerpts of two judged composers, stage 05's model. None when
    neither can tell two of `composers` apart."""
    served = served_judge(genre_dir, composers)
    fitted = fitted_judge(tokenizer, composers, real_train, seed)
    if served is None or fitted is None:
        return served or fitted
    among = [c for _, c in served.composers if c in {cid for _, cid in fitted.composers}]
    valid = [p for p in real_valid if p.composer_id in among]
    if len({p.composer_id for p in valid}) < 2:
        served.choice = "stage 05's model: too few valid excerpts to compare it with a fitted one"
        return served
    true = np.array([p.composer_id for p in valid])
    acc = {
        j.model: float(np.mean(j.predict(tokenizer, valid, among) == true))
        for j in (served, fitted)
    }
    best = fitted if acc[fitted.model] > acc[served.model] else served
    best.choice = f"accuracy on {len(valid)} valid excerpts: " + ", ".join(
        f"{k} {v:.3f}" for k, v in acc.items()
    )
    log.info("judge: %s (%s)", best.model, best.choice)
    return best


def judge_conditioning(
    tokenizer,
    judge: Judge | None,
    generated: Sequence[ev.Piece],
    held_out: Sequence[ev.Piece],
    composers: Sequence[tuple[str, int]],
    min_ratio: float,
    confusion_png: str | Path | None = None,
) -> dict:
    """Flat metrics: the judge (`make_judge`), its accuracy on real `held_out` excerpts
    against chance, and per guidance value of `generated` (`g<value>_cond_acc...`; no
    guidance: `cond_acc...`) the share judged to be the composer it was generated for, with
    p-value, Wilson interval and `_counts`. A `note` says what was skipped and why; the PNG
    (and its CSV) then says so."""
    out: dict = {"judge_min_ratio": min_ratio}
    if judge is None:
        return _skip(
            out,
            f"fewer than 2 frequent composers with real train excerpts ({len(composers)} "
            "frequent, composers.min_pieces): no judge, conditioning accuracy not measured",
            confusion_png,
        )
    real = {cid: [p for p in held_out if p.composer_id == cid] for _, cid in judge.composers}
    judged = [(n, cid) for n, cid in judge.composers if real[cid]]
    skipped = [f"{n} (no held-out excerpt)" for n, cid in judge.composers if not real[cid]]
    unknown = [n for n, c in composers if (n, c) not in judge.composers]
    skipped += [f"{n} (unknown to the judge)" for n in unknown]
    out.update(
        {
            "judge": judge.model,
            "judge_choice": judge.choice,
            "judge_composers": ",".join(n for n, _ in judged),
            "judge_skipped": "; ".join(skipped),
            "composers_evaluated": len(judged),
        }
    )
    if judge.train_excerpts is not None:
        out["judge_train_excerpts"] = judge.train_excerpts
    if len(judged) < 2:
        return _skip(
            out,
            f"{len(judged)} composer(s) with held-out excerpts known to the judge; "
            "conditioning accuracy needs 2",
            confusion_png,
        )
    ids = [cid for _, cid in judged]
    chance = 1.0 / len(ids)
    test = [p for cid in ids for p in real[cid]]
    test_true = [p.composer_id for p in test]
    test_pred = judge.predict(tokenizer, test, ids)
    out.update({"chance": chance, "judge_real_excerpts": len(test)})
    out.update(_accuracy("judge_real_acc", test_true, test_pred, chance))
    out["judge_ratio"] = out["judge_real_acc"] / chance
    counts = bool(out["judge_ratio"] >= min_ratio)
    out["judge_counts"] = counts
    unclassified = int(np.sum(test_pred < 0))
    panels = []
    for g in sorted({p.guidance for p in generated}, key=lambda g: -1 if g is None else g):
        group = [p for p in generated if p.guidance == g and p.composer_id in ids]
        if not group:
            continue
        prefix = "cond_acc" if g is None else f"{ev.guidance_tag(g)}_cond_acc"
        true = [p.composer_id for p in group]
        pred = judge.predict(tokenizer, group, ids)
        unclassified += int(np.sum(pred < 0))
        out.update(_accuracy(prefix, true, pred, chance))
        out[f"{prefix}_counts"] = counts
        title = "generated" if g is None else f"generated, guidance {g:g}"
        panels.append((f"{title} (acc {out[prefix]:.2f})", true, pred))
    out["judge_unclassified"] = unclassified
    panels.append((f"real held-out (acc {out['judge_real_acc']:.2f})", test_true, test_pred))
    log.info(
        "judge %s: %.3f on %d real held-out excerpts, %.1fx chance (%s)",
        judge.model,
        out["judge_real_acc"],
        len(test),
        out["judge_ratio"],
        "counts" if counts else f"below {min_ratio}x: conditioning figures do not count",
    )
    if confusion_png is not None:
        index = {cid: i for i, cid in enumerate(ids)}
        write_confusion(
            [n for n, _ in judged],
            [  # an unclassified piece (-1) has no cell
                (
                    t,
                    [index[a] for a, b in zip(y, p, strict=True) if b >= 0],
                    [index[b] for b in p if b >= 0],
                )
                for t, y, p in panels
            ],
            Path(confusion_png).with_suffix(".csv"),
            confusion_png,
        )
    return ev.finite(out)


def _skip(out: dict, note: str, confusion_png) -> dict:
    log.warning("judge: %s", note)
    out["note"] = note
    if confusion_png is not None:
        ev.plot_message(confusion_png, note)
        with atomic_path(Path(confusion_png).with_suffix(".csv")) as tmp:
            tmp.write_text("actual,predicted\n")
    return out
