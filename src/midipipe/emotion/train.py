"""Stage 07: labelled bars + per-bar latents -> models/emotion/, metrics/emotion.json, the k-fold
table and valence/arousal curves of a few pieces.

Train and valid pieces are the k-fold pool (piece-grouped) and what the final MLP is fitted on;
test pieces are scored once at the end. Without any labelled bar the model is the rule-based
estimate (hand-set weights, not learned), and the metrics say so.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midipipe.core.errors import BadMidi
from midipipe.core.io import atomic_path, write_json
from midipipe.core.params import TrainParams
from midipipe.core.reports import write_metrics
from midipipe.data.store import Corpus
from midipipe.emotion import EmotionParams, plot_curves, predict_file, rules_config
from midipipe.emotion import quadrant as quad
from midipipe.emotion import regressor as mlp
from midipipe.emotion.evaluate import baselines, cross_validate, score, scoring_mask, summarize
from midipipe.emotion.targets import Bars, collect, read_labels
from midipipe.evaluation import features as hand

log = logging.getLogger(__name__)


@dataclass
class EmotionPaths:
    """Where stage 07 reads and writes (the DAG's paths by default)."""

    manifest: str = "data/manifest.parquet"
    bar_va: str = "data/labels/bar_va.parquet"
    tokens: str = "data/tokens/musetok"
    corpus: str = "data/corpus"
    latents: str = "data/latents"
    musetok: str = "models/musetok"
    out: Path = Path("models/emotion")
    metrics: str = "metrics/emotion.json"
    kfold_csv: str = "metrics/emotion_kfold.csv"
    curves_csv: str = "metrics/emotion_curves.csv"
    curves_png: str = "metrics/emotion_curves.png"


TABLE_COLUMNS = ["fold", "label", "estimator", "input", "bars", "pieces"] + [
    f"{m}_{a}" for m in ("ccc", "r", "rmse", "sign_acc") for a in ("valence", "arousal")
]


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_curves(io: EmotionPaths, rows: list[dict], title: str) -> None:
    write_csv(io.curves_csv, rows, ["piece", "bar", "estimator", "valence", "arousal"])
    plot_curves(rows, io.curves_png, title)


def rules_only(io: EmotionPaths, p: EmotionParams, reason: str, labelled_pieces: int = 0) -> None:
    log.warning("%s: the model is the rule-based estimate, hand-set, not learned", reason)
    io.out.mkdir(parents=True, exist_ok=True)
    write_json(io.out / "config.json", rules_config(p.rules))
    write_metrics(
        io.metrics,
        {
            "status": "skipped",  # nothing learned: the hand-set rules serve as the model
            "reason": reason,
            "estimator": "rules",
            "learned": False,
            "labelled_pieces": labelled_pieces,
            "labelled_bars": 0,
            "note": reason,
        },
    )
    write_csv(io.kfold_csv, [], TABLE_COLUMNS)
    corpus = Corpus(io.corpus, io.manifest)
    rows, shown = [], 0
    for pid in corpus.where.ids():
        if shown == p.examples:
            break
        try:
            bars = predict_file(corpus.music(pid), io.out)
        except (BadMidi, ValueError) as exc:
            log.info("no example curve for %s: %s", pid, exc)
            continue
        rows += [{"piece": pid[:8], **b} for b in bars]
        shown += 1
    write_curves(io, rows, "rule-based estimate (not learned); no labelled data")


def quadrant_split(bars: Bars, labels: np.ndarray, min_pieces: int):
    """(train pieces, eval pieces, eval split name) of the quadrant head, or a reason it
    cannot be trained: too few labelled train pieces, one quadrant, nothing to score."""
    split = np.array(bars.splits)
    train = np.flatnonzero((split == "train") & (labels >= 0))
    test = np.flatnonzero((split == "test") & (labels >= 0))
    eval_split, held = "test", test
    if len(test) < min_pieces // 2:  # a few stray test clips would make a meaningless score
        eval_split, held = "valid", np.flatnonzero((split == "valid") & (labels >= 0))
    present = sorted({quad.QUADRANTS[q] for q in labels[train]})
    if len(train) < min_pieces:
        return (
            f"{len(train)} quadrant-labelled train pieces, fewer than "
            f"emotion.min_quadrant_pieces={min_pieces}"
        )
    if len(present) < 2:
        return f"the quadrant-labelled train pieces hold one quadrant only ({present})"
    if not len(held):
        return "no quadrant-labelled test or valid piece to score on"
    return train, held, eval_split


def choice_folds(bars: Bars, train: np.ndarray, folds: int) -> list | None:
    """Song-grouped folds of the train pieces (index pairs into `train`) whose out-of-fold
    predictions choose the served mix without looking at the eval split, each quadrant spread
    over the folds; None when there are too few songs, or a fold would fit on one quadrant."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [bars.groups[k] for k in train]
    n = min(folds, len(set(groups)))
    if n < 2:
        return None
    labels = quad.quadrant_of(bars.piece_targets)[train]
    with warnings.catch_warnings():  # a quadrant with fewer songs than folds: sklearn warns
        warnings.simplefilter("ignore", UserWarning)
        split = list(StratifiedGroupKFold(n_splits=n).split(train, labels, groups))
    return None if any(len(set(labels[a])) < 2 for a, _ in split) else split


def out_of_fold(folds: list, fit_predict, n: int, width: int = len(quad.QUADRANTS)) -> np.ndarray:
    """[n, width] probabilities of each train piece from a model fitted without its fold:
    `fit_predict(fold, fit_idx, held_idx)` gives the held pieces'."""
    out = np.zeros((n, width), np.float32)
    for i, (a, b) in enumerate(folds):
        out[b] = fit_predict(i, a, b)
    return out


HANDCRAFTED_C = (0.003, 0.01, 0.03, 0.1, 0.3)  # inverse L2 strengths tried out of fold


def tune_linear(feats: np.ndarray, labels: np.ndarray, classes, folds: list, seed: int):
    """(C, out-of-fold probabilities) of the hand-crafted logistic model on `labels` (indices
    into `classes`) with the best out-of-fold log-likelihood over `HANDCRAFTED_C`."""
    best = None
    for c in HANDCRAFTED_C:

        def fit_predict(_, a, b, c=c):
            model = hand.fit_linear(feats[a], labels[a], classes, c, seed)
            return model.predict_proba(feats[b])

        probs = out_of_fold(folds, fit_predict, len(labels), len(classes))
        score = quad.log_likelihood(probs, labels)
        if best is None or score > best[0]:
            best = (score, c, probs)
    return best[1], best[2]


def axes_split(labels: np.ndarray, folds: list) -> bool:
    """Whether both sides of valence and of arousal are in every fold's fitting part (the
    factorised member's binary models need two classes)."""
    return all(
        len(set(quad.axis_labels(labels[a], i))) == 2
        for a, _ in folds
        for i in range(len(quad.AXES))
    )


def quadrant_head(io: EmotionPaths, p: EmotionParams, tp: TrainParams, bars: Bars, x) -> dict:
    """Train the 4-quadrant heads (`quadrant.seeds`, averaged), the hand-crafted 4-way model
    and the factorised one (binary valence and arousal models, P(q) = P(v) P(a)) beside them;
    serve their mix (pool and member weights) with the best out-of-fold log-likelihood on
    song-grouped folds of train, and score all, with the majority, on the eval split. The
    mix is chosen on one head per fold, not on a seed ensemble per fold (`seeds` times the
    cost): the served ensemble is somewhat less confident than that."""
    labels = quad.quadrant_of(bars.piece_targets)
    got = quadrant_split(bars, labels, p.min_quadrant_pieces)
    if isinstance(got, str):
        log.info("quadrant head skipped: %s", got)
        return {"quadrant_status": "skipped", "quadrant_reason": got}
    train, held, eval_split = got
    classes = list(quad.QUADRANTS)
    off = bars.offsets
    y = labels[train]
    feats = quad.handcrafted_matrix(bars.music, bars.cues, off)
    folds = choice_folds(bars, train, p.quadrant.folds)
    oof: dict[str, np.ndarray] = {}
    best = {pl: (-np.inf, {"mlp": 1.0}) for pl in quad.POOLS}
    c = {m: hand.DEFAULT_C for m in ("handcrafted", *quad.AXES)}
    if folds is None:
        log.warning(
            "quadrant head: too few train songs for %d song-grouped folds with two quadrants"
            " each; the heads are served alone (quadrant_choice_folds: 0)",
            p.quadrant.folds,
        )
    else:

        def head_oof(i, a, b):  # one head per fold: the mix is chosen on single heads
            fold_tp = dataclasses.replace(tp, seed=tp.seed + i)
            head = quad.fit(p.quadrant, x, off, train[a], y[a], fold_tp)
            return quad.predict(head, x, off, train[b])

        log.info("quadrant head: choosing the served mix on %d song-grouped folds", len(folds))
        oof["mlp"] = out_of_fold(folds, head_oof, len(train))
        c["handcrafted"], oof["handcrafted"] = tune_linear(feats[train], y, classes, folds, tp.seed)
        if axes_split(y, folds):
            pos = {}
            for i, axis in enumerate(quad.AXES):
                yb = quad.axis_labels(y, i)
                c[axis], probs = tune_linear(feats[train], yb, quad.SIDES, folds, tp.seed)
                pos[axis] = probs[:, quad.SIDES.index("positive")]
            oof["factorised"] = quad.factorised(pos)
        best = quad.choose_mix(oof, y)
    pool = max(quad.POOLS, key=lambda pl: best[pl][0])
    weights = {m: 0.0 for m in quad.MEMBERS} | best[pool][1]
    served = quad.served_name(weights)
    if oof:
        oof["served"] = quad.served_probs(weights, oof, pool)
    heads = quad.fit_ensemble(p.quadrant, tp, x, off, train, y)
    linear = hand.fit_linear(feats[train], y, classes, c["handcrafted"], tp.seed)
    info = {"input": p.mlp.input, "piece_std": p.quadrant.piece_std}
    quad.save(heads, io.out, {**info, "served": served, "weights": weights, "pool": pool})
    meta = {"task": "emotion quadrant", "features": list(quad.HANDCRAFTED)}
    linear.save(io.out, {**meta, "c": c["handcrafted"]})
    mlp_p = quad.predict(heads, x, off, held)
    probs = {"mlp": mlp_p, "handcrafted": linear.predict_proba(feats[held])}
    if "factorised" in oof:
        axes = quad.fit_axes(feats[train], y, c, tp.seed)
        for axis, model in axes.items():
            model.save(io.out / axis, {**meta, "task": f"emotion {axis}", "c": c[axis]})
        probs["factorised"] = quad.factorised(quad.positive(axes, feats[held]))
    majority = np.bincount(y, minlength=len(classes)).argmax()
    scored = {
        "": mlp_p,
        **{f"{m}_": v for m, v in probs.items() if m != "mlp"},
        "majority_": np.eye(len(classes))[np.full(len(held), majority)],
        "served_": quad.served_probs(weights, probs, pool),
    }
    single = [
        quad.accuracies(quad.predict(m, x, off, held), labels[held])["quadrant_accuracy"]
        for m in heads.members
    ]
    out = {
        "quadrant_status": "done",
        "eval_split": eval_split,
        "quadrant_train_pieces": len(train),
        "quadrant_eval_pieces": len(held),
        "quadrant_seeds": len(single),
        "quadrant_choice_folds": len(folds or ()),
        "quadrant_served": served,
        "quadrant_pool": pool,
        **{f"quadrant_{m}_weight": w for m, w in weights.items()},
        # the best out-of-fold log-likelihood of each pool, and each member's out of fold
        **{f"quadrant_choice_{pl}_loglik": b[0] for pl, b in best.items() if oof},
        **{f"quadrant_oof_{m}_loglik": quad.log_likelihood(v, y) for m, v in oof.items()},
        **{
            f"quadrant_oof_{m}_accuracy": quad.accuracies(v, y)["quadrant_accuracy"]
            for m, v in oof.items()
        },
        "handcrafted_c": c["handcrafted"],
        **{f"factorised_{a}_c": c[a] for a in quad.AXES if "factorised" in oof},
        # the spread of the ensemble's single heads on the eval split
        "quadrant_member_accuracy_min": min(single),
        "quadrant_member_accuracy_mean": float(np.mean(single)),
        "quadrant_member_accuracy_max": max(single),
    }
    for prefix, pr in scored.items():
        out.update(quad.accuracies(pr, labels[held], prefix))
    return out


def learned(io: EmotionPaths, p: EmotionParams, tp: TrainParams, bars: Bars) -> None:
    split = np.array(bars.splits)
    pool, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    compare = list(mlp.INPUTS) if p.compare_inputs else [p.mlp.input]
    names = {p.mlp.input, *compare}
    latents, codebook = mlp.bar_inputs(
        {mlp.latent_of(n) for n in names} - {None},
        bars.piece_ids,
        bars.tokens,
        io.latents,
        io.musetok,
        tp.device,
    )
    inputs = {n: mlp.assemble(n, latents, bars.cues) for n in names}
    table = cross_validate(bars, pool, inputs, codebook, p.mlp, tp, compare, p.folds, tp.seed)
    means, flat = summarize(table)
    served = flat.get("kfold_best_input", p.mlp.input)  # the k-fold's winner, when it compared
    if served != p.mlp.input:
        log.info("serving the MLP on %s: it beat %s in the k-fold", served, p.mlp.input)
    estimator = mlp.estimator_of(served)

    x = inputs[served]
    fit_rows = bars.trainable(pool)
    model = mlp.fit_mlp(
        mlp.config_for(dataclasses.replace(p.mlp, input=served), x, codebook),
        x,
        bars.targets,
        bars.weights,
        bars.offsets,
        fit_rows,
        tp,
        p.mlp.loss,
    )
    facts = {
        "input": served,
        "served_input": served,  # what models/emotion serves (the CLI and stage 10 read it)
        "configured_input": p.mlp.input,
        "cue_window": p.rules.window,
        "loss": p.mlp.loss,
        "learned": True,
        "lr": tp.lr,
        "train_pieces": len(pool),
        "train_bars": len(fit_rows),
    }
    mlp.save(model, io.out, facts)
    if mlp.latent_of(served) is not None:
        save_fallback(io, p, tp, bars, fit_rows, facts)
    head_x = quad.head_input(inputs[p.mlp.input], p.mlp.input, p.quadrant.piece_std)
    quadrant = quadrant_head(io, p, tp, bars, head_x)

    mask, eval_targets = scoring_mask(bars)
    test_rows: list[dict] = []
    if mask[bars.rows(test)].any():
        pred = mlp.predict(model, x, bars.offsets, bars.rows(test))
        test_rows = score(bars, test, baselines(bars, pool, test) + [(estimator, served, pred)])
    _, test_flat = summarize(test_rows, "test")
    test_flat.pop("test_best_input", None)
    write_metrics(
        io.metrics,
        {
            "estimator": estimator,
            **facts,
            "labelled_pieces": len(bars.piece_ids),
            "labelled_bars": int((bars.weights > 0).sum()),
            "rated_bars": int(bars.rated.sum()),
            "eval_targets": eval_targets,
            "folds": len({r["fold"] for r in table}),
            **flat,
            **test_flat,
            **quadrant,
        },
    )
    write_csv(
        io.kfold_csv, table + means + [{"fold": "test", **r} for r in test_rows], TABLE_COLUMNS
    )
    if "kfold_best_input" in flat:
        log.info("k-fold: best MLP input %s", flat["kfold_best_input"])

    rated_test = [k for k in test if mask[bars.rows([k])].any()]
    examples = (rated_test or list(pool))[: p.examples]
    rows = []
    for k in examples:
        span = bars.rows([k])
        va = {
            "listeners": bars.targets[span],
            "rules": bars.rules[span],
            estimator: mlp.predict(model, x, bars.offsets, span),
        }
        for estimator, values in va.items():
            rows += [
                {
                    "piece": bars.piece_ids[k][:8],
                    "bar": b,
                    "estimator": estimator,
                    "valence": float(v),
                    "arousal": float(a),
                }
                for b, (v, a) in enumerate(values)
                if estimator != "listeners" or mask[span[b]]
            ]
    write_curves(io, rows, "test pieces" if rated_test else "training pieces (no rated test piece)")


def save_fallback(
    io: EmotionPaths, p: EmotionParams, tp: TrainParams, bars: Bars, rows, facts: dict
) -> None:
    """models/emotion/fallback/: a cues-only MLP fitted on the same bars, which stage 10 serves
    for the songs and bars MuseTok cannot encode (a meter or pitch outside its vocabulary, a
    bar longer than the encoder window)."""
    x = mlp.assemble(mlp.CUES, {}, bars.cues)
    cues = dataclasses.replace(p.mlp, input=mlp.CUES)
    model = mlp.fit_mlp(
        mlp.config_for(cues, x), x, bars.targets, bars.weights, bars.offsets, rows, tp, cues.loss
    )
    mlp.save(
        model, io.out / "fallback", {**facts, "input": mlp.CUES, "fallback_for": facts["input"]}
    )


def train_emotion(p: EmotionParams, tp: TrainParams, io: EmotionPaths | None = None) -> None:
    """Stage 07: fit and score the MLP on the labelled bars, or serve the rules and say why."""
    io = io or EmotionPaths()
    pieces = read_labels(io.manifest, io.bar_va, p.targets)
    bars = (
        collect(pieces, io.tokens, Corpus(io.corpus, io.manifest), p.targets, p.rules)
        if pieces
        else None
    )
    shutil.rmtree(io.out, ignore_errors=True)
    if bars is None:
        rules_only(
            io,
            p,
            "no labelled data configured (no listener bar labels and no piece labels "
            "in data.sources)",
        )
    elif not (bars.weights > 0).any():
        reason = f"{len(pieces)} labelled pieces, but none with MuseTok tokens and MIDI"
        rules_only(io, p, reason, len(pieces))
    else:
        learned(io, p, tp, bars)
