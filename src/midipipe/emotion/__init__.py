"""Bar-level valence and arousal in [-1, 1]: targets from each corpus's labels (`targets`), a
transparent rule-based estimate from the MIDI (`rules`, not learned), an MLP on per-bar MuseTok
latents (`regressor`) and their piece-grouped evaluation (`evaluate`).

Every per-bar output carries `estimator`: "mlp_latents" (learned from MuseTok latents),
"mlp_cues" (learned from the rule cues), "mlp_latents+cues" (learned from both) or "rules"
(hand-set weights, not learned).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from midipipe.core.device import resolve_device
from midipipe.core.io import atomic_path
from midipipe.core.params import build
from midipipe.data.midi import load_score
from midipipe.emotion import regressor
from midipipe.emotion.quadrant import QuadrantParams
from midipipe.emotion.regressor import MLPParams
from midipipe.emotion.rules import (
    RuleParams,
    bar_cues,
    bar_grid,
    estimate,
    meter_grid,
    seconds_at,
)
from midipipe.emotion.targets import TargetParams

log = logging.getLogger(__name__)

RULES = "rules"


@dataclass
class EmotionParams:
    """`emotion:` section of params.yaml (stage 07 and `midipipe emotion`)."""

    targets: TargetParams = field(default_factory=TargetParams)
    rules: RuleParams = field(default_factory=RuleParams)
    mlp: MLPParams = field(default_factory=MLPParams)
    quadrant: QuadrantParams = field(default_factory=QuadrantParams)
    min_quadrant_pieces: int = 20  # labelled train pieces the quadrant head needs
    compare_inputs: bool = True  # k-fold the MLP on every input (`regressor.INPUTS`), name the best
    folds: int = 5  # < 2: no k-fold table (the test split alone scores the regressor)
    examples: int = 3  # pieces drawn in metrics/emotion_curves.png
    train: dict | None = field(  # overrides of `train:`
        default_factory=lambda: {"batch_size": 256, "epochs": 40}
    )


def rules_config(p: RuleParams) -> dict:
    """models/emotion/config.json when no labelled data is configured."""
    return {"estimator": RULES, "learned": False, "rules": dataclasses.asdict(p)}


def predict_file(
    path: str | Path | bytes,
    model_dir: str | Path = "models/emotion",
    musetok_dir: str | Path = "models/musetok",
    device: str = "auto",
    rules_only: bool = False,
) -> list[dict]:
    """Per-bar `{bar, start_tick, end_tick, start_s, valence, arousal, estimator}` of one MIDI
    file (or its bytes), with the model in `model_dir` (the rule estimate when it holds none, or
    with `rules_only`), run on `device` (auto | cpu | cuda). Bars follow the file's time signatures
    (`rules.meter_grid`), or are MuseTok's (the first time signature's length throughout) for a
    model that reads MuseTok latents; both start at the bar of the first note. Ticks are the
    file's, start_s the bar's start in seconds."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    score = load_score(data)
    config_path = Path(model_dir) / "config.json"
    if config_path.exists() and not rules_only:
        config = json.loads(config_path.read_text())
    else:
        if not rules_only:
            log.warning(
                "no %s: using the rule-based estimate (hand-set weights, not learned)", config_path
            )
        config = rules_config(RuleParams())
    if config["estimator"] == RULES:
        grid = meter_grid(score)
        va = estimate(score, grid, build(RuleParams, config["rules"], "rules"))
    else:
        from midipipe.musetok.events import encode_score

        model = regressor.load(model_dir)
        name = model.cfg.input
        grid, latents = meter_grid(score), {}
        if regressor.latent_of(name) is not None:
            ids, bar_starts = encode_score(score, data)
            grid = bar_grid(score, len(bar_starts))
            latents, _ = regressor.encode_inputs(musetok_dir, [(ids, bar_starts)], device)
        cues = bar_cues(score, grid, config["cue_window"]) if regressor.reads_cues(name) else None
        x = regressor.assemble(name, latents, cues)
        if x.shape[1] != model.cfg.width:
            raise ValueError(
                f"{musetok_dir} gives {name} of width {x.shape[1]}, but the emotion "
                f"model in {model_dir} was trained on width {model.cfg.width}: use the MuseTok "
                "model it was trained with"
            )
        va = regressor.predict(model.to(resolve_device(device)), x, np.array([0, len(x)]))
    bounds = grid.bounds()
    start_s = seconds_at(score, bounds[:-1])
    return [
        {
            "bar": i,
            "start_tick": int(round(bounds[i])),
            "end_tick": int(round(bounds[i + 1])),
            "start_s": round(float(start_s[i]), 3),
            "valence": float(v),
            "arousal": float(a),
            "estimator": config["estimator"],
        }
        for i, (v, a) in enumerate(va)
    ]


def predict_quadrants(
    path: str | Path,
    model_dir: str | Path = "models/emotion",
    musetok_dir: str | Path = "models/musetok",
) -> dict | None:
    """`{"served": ..., "probabilities": {Q1..Q4: p}}` of one MIDI file from the model stage 07
    serves (the quadrant heads, the hand-crafted 4-way model, the factorised valence x arousal
    one, or their mix with the weights stage 07 chose), or None without one."""
    from midipipe.emotion import quadrant

    head = quadrant.load(model_dir)
    if head is None:
        return None
    model_dir = Path(model_dir)
    info = json.loads((model_dir / "quadrant.json").read_text())
    if "weights" not in info:  # saved before the factorised member: one head weight
        raise ValueError(
            f"{model_dir / 'quadrant.json'} predates the served mix's member weights: re-run "
            "stage 07 (`dvc repro train_emotion`)"
        )
    weights = info["weights"]
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    score = load_score(data)
    from midipipe.musetok.events import encode_score

    ids, bar_starts = encode_score(score, data)  # the bars stage 07 measured the cues on
    config = json.loads((model_dir / "config.json").read_text())
    cues = bar_cues(score, bar_grid(score, len(bar_starts)), config["cue_window"])
    probs: dict[str, np.ndarray] = {}
    if weights.get("handcrafted", 0) > 0 or weights.get("factorised", 0) > 0:
        from midipipe.evaluation.features import LinearModel

        row = quadrant.handcrafted_row(score, cues)[None]

        def linear(folder: Path) -> LinearModel:
            saved = folder / "handcrafted.json"
            if json.loads(saved.read_text()).get("features") != list(quadrant.HANDCRAFTED):
                raise ValueError(
                    f"{saved}: its model reads other features than this code's "
                    f"{len(quadrant.HANDCRAFTED)}: re-run stage 07 (`dvc repro train_emotion`)"
                )
            return LinearModel.load(folder)

        if weights.get("handcrafted", 0) > 0:
            probs["handcrafted"] = linear(model_dir).predict_proba(row)
        if weights.get("factorised", 0) > 0:
            axes = {a: linear(model_dir / a) for a in quadrant.AXES}
            probs["factorised"] = quadrant.factorised(quadrant.positive(axes, row))
    if weights.get("mlp", 0) > 0:
        name = info["input"]
        latents = {}
        if regressor.latent_of(name) is not None:
            latents, _ = regressor.encode_inputs(musetok_dir, [(ids, bar_starts)])
        x = regressor.assemble(name, latents, cues if regressor.reads_cues(name) else None)
        x = quadrant.head_input(x, name, info["piece_std"])
        probs["mlp"] = quadrant.predict(head, x, np.array([0, len(x)]), np.array([0]))
    served = quadrant.served_probs(weights, probs, info.get("pool", "linear"))[0]
    return {
        "served": info["served"],
        "probabilities": {q: float(v) for q, v in zip(quadrant.QUADRANTS, served, strict=True)},
    }


def plot_curves(rows: Sequence[dict], png_path: str | Path, title: str | None = None) -> None:
    """Valence (solid) and arousal (dashed) over bars, one line per `estimator` and one panel
    per `piece` (rows without `piece` share one panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pieces = list(dict.fromkeys(r.get("piece", "") for r in rows)) or [""]
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    colors = {e: f"C{i}" for i, e in enumerate(estimators)}
    fig, axes = plt.subplots(len(pieces), 1, figsize=(8, 2.6 * len(pieces)), squeeze=False)
    for ax, piece in zip(axes[:, 0], pieces, strict=True):
        for estimator in estimators:
            sel = [r for r in rows if r.get("piece", "") == piece and r["estimator"] == estimator]
            if not sel:
                continue
            bars = [r["bar"] for r in sel]
            ax.plot(
                bars,
                [r["valence"] for r in sel],
                color=colors[estimator],
                label=f"valence ({estimator})",
            )
            ax.plot(
                bars,
                [r["arousal"] for r in sel],
                color=colors[estimator],
                linestyle="--",
                label=f"arousal ({estimator})",
            )
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_ylabel(piece[:12] or "value")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2, loc="upper right")
    axes[-1, 0].set_xlabel("bar")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
