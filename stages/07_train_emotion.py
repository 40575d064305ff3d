"""Stage 07: labelled bars + per-bar latents -> models/emotion/, metrics/emotion.json, the k-fold
table and valence/arousal curves of a few pieces.

Train and valid pieces are the k-fold pool (piece-grouped) and what the final MLP is fitted on;
test pieces are scored once at the end. Without any labelled bar the model is the rule-based
estimate (hand-set weights, not learned), and the metrics say so.
"""

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from midipipe import params
from midipipe.emotion import EmotionParams, plot_curves, predict_file, rules_config
from midipipe.emotion import regressor as mlp
from midipipe.emotion.evaluate import (
    baselines,
    cross_validate,
    score,
    scoring_mask,
    summarize,
)
from midipipe.emotion.targets import Bars, collect, read_labels
from midipipe.logs import run_main
from midipipe.midi import BadMidi
from midipipe.shards import atomic_path, write_json
from midipipe.training import write_metrics

log = logging.getLogger("midipipe.stage07")
OUT = Path("models/emotion")
MANIFEST, BAR_VA = "data/manifest.parquet", "data/labels/bar_va.parquet"
TOKENS, MIDI = "data/tokens/musetok", "data/midi"
LATENTS, MUSETOK = "data/latents", "models/musetok"
KFOLD_CSV = "metrics/emotion_kfold.csv"
CURVES_CSV, CURVES_PNG = "metrics/emotion_curves.csv", "metrics/emotion_curves.png"
TABLE_COLUMNS = ["fold", "label", "estimator", "input", "bars", "pieces"] + [
    f"{m}_{a}" for m in ("ccc", "r", "rmse", "sign_acc") for a in ("valence", "arousal")
]


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_curves(rows: list[dict], title: str) -> None:
    write_csv(CURVES_CSV, rows, ["piece", "bar", "estimator", "valence", "arousal"])
    plot_curves(rows, CURVES_PNG, title)


def rules_only(p: EmotionParams, reason: str, labelled_pieces: int = 0) -> None:
    log.warning("%s: the model is the rule-based estimate, hand-set, not learned", reason)
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "config.json", rules_config(p.rules))
    write_metrics(
        "metrics/emotion.json",
        {
            "estimator": "rules",
            "learned": False,
            "labelled_pieces": labelled_pieces,
            "labelled_bars": 0,
            "note": reason,
        },
    )
    write_csv(KFOLD_CSV, [], TABLE_COLUMNS)
    manifest = pq.read_table(MANIFEST, columns=["piece_id", "path"]).to_pylist()
    rows, shown = [], 0
    for r in sorted(manifest, key=lambda r: r["piece_id"]):
        if shown == p.examples:
            break
        try:
            bars = predict_file(Path(MIDI) / r["path"], OUT)
        except (BadMidi, ValueError) as exc:
            log.info("no example curve for %s: %s", r["path"], exc)
            continue
        rows += [{"piece": r["piece_id"][:8], **b} for b in bars]
        shown += 1
    write_curves(rows, "rule-based estimate (not learned); no labelled data")


def learned(p: EmotionParams, tp, bars: Bars) -> None:
    split = np.array(bars.splits)
    pool, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    compare = list(mlp.INPUTS) if p.compare_inputs else [p.mlp.input]
    names = {p.mlp.input, *compare}
    latents, codebook = mlp.bar_inputs(
        {mlp.latent_of(n) for n in names} - {None},
        bars.piece_ids,
        bars.tokens,
        LATENTS,
        MUSETOK,
        tp.device,
    )
    inputs = {n: mlp.assemble(n, latents, bars.cues) for n in names}
    estimator = mlp.estimator_of(p.mlp.input)
    table = cross_validate(bars, pool, inputs, codebook, p.mlp, tp, compare, p.folds, tp.seed)
    means, flat = summarize(table)

    x = inputs[p.mlp.input]
    fit_rows = bars.trainable(pool)
    model = mlp.fit_mlp(
        mlp.config_for(p.mlp, x, codebook),
        x,
        bars.targets,
        bars.weights,
        bars.offsets,
        fit_rows,
        tp,
        p.mlp.loss,
    )
    facts = {
        "input": p.mlp.input,
        "cue_window": p.rules.window,
        "loss": p.mlp.loss,
        "learned": True,
        "train_pieces": len(pool),
        "train_bars": len(fit_rows),
    }
    mlp.save(model, OUT, facts)

    mask, eval_targets = scoring_mask(bars)
    test_rows: list[dict] = []
    if mask[bars.rows(test)].any():
        pred = mlp.predict(model, x, bars.offsets, bars.rows(test))
        test_rows = score(
            bars, test, baselines(bars, pool, test) + [(estimator, p.mlp.input, pred)]
        )
    _, test_flat = summarize(test_rows, "test")
    test_flat.pop("test_best_input", None)
    write_metrics(
        "metrics/emotion.json",
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
        },
    )
    write_csv(KFOLD_CSV, table + means + [{"fold": "test", **r} for r in test_rows], TABLE_COLUMNS)
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
    write_curves(rows, "test pieces" if rated_test else "training pieces (no rated test piece)")


def main() -> None:
    p = params.build(EmotionParams, params.section("params.yaml", "emotion"), "emotion")
    tp = params.merged_train(params.load(), p.train)
    pieces = read_labels(MANIFEST, BAR_VA, p.targets)
    bars = collect(pieces, TOKENS, MIDI, p.targets, p.rules) if pieces else None
    shutil.rmtree(OUT, ignore_errors=True)
    if bars is None:
        rules_only(
            p,
            "no labelled data configured (no listener bar labels and no piece labels "
            "in data.sources)",
        )
    elif not (bars.weights > 0).any():
        reason = f"{len(pieces)} labelled pieces, but none with MuseTok tokens and MIDI"
        rules_only(p, reason, len(pieces))
    else:
        learned(p, tp, bars)


if __name__ == "__main__":
    run_main(main)
