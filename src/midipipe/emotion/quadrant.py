"""The categorical head: a piece's Russell quadrant (Q1 happy, Q2 tense, Q3 sad, Q4 calm) from
an MLP applied to every bar (the same per-bar input as the regressor: MuseTok latents and the
rule cues), its logits averaged over the piece's bars (padding masked), trained with
cross-entropy on the pieces' quadrant labels.

Trained `seeds` times (seed, seed + 1, ..) and served as the mean of those heads'
probabilities: on EMOPIA val single heads move by a few clips between seeds (README).

A piece's quadrant is read from the signs of its own valence/arousal label (an EMOPIA
quadrant, an emotion word, or binary labels), so any corpus with piece labels trains it.
Binary valence (arousal) is scored from the summed probabilities of the quadrants on each side.

Served mixed with two hand-crafted members: a 4-way logistic model and a factorised one (a
binary logistic model per axis, P(q) = P(v) P(a)); stage 07 chooses the members' weights out
of fold on train (`choose_mix`). Saved beside the regressor as `quadrant.safetensors` +
`quadrant.json` (the weights and pool), `handcrafted.*` and `valence/`, `arousal/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from midipipe.core.device import seed_everything
from midipipe.core.errors import BadMidi
from midipipe.core.io import atomic_path
from midipipe.core.params import TrainParams
from midipipe.data.midi import load_score
from midipipe.emotion.harmony import HARMONY, harmony_features
from midipipe.emotion.rules import BAR_STATS
from midipipe.evaluation.features import FEATURES, fit_linear, piece_features

log = logging.getLogger(__name__)

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
SIGNS = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])  # valence, arousal per quadrant
# the served model's members: the heads, the hand-crafted 4-way model, and the factorised one
# (two binary hand-crafted models, valence and arousal, P(q) = P(v) P(a): EMOPIA's own
# baselines model the axes apart; out of fold on EMOPIA train it beats the 4-way model,
# accuracy 0.680 -> 0.725; README)
MEMBERS = ("mlp", "handcrafted", "factorised")
AXES = ("valence", "arousal")
# how the members are mixed: their probabilities' weighted mean, or their log-probabilities'
# (a product of experts: a confident, wrong side is outvoted more easily)
POOLS = ("linear", "log")
STEPS = 20  # member weights in steps of 1/20: two fold draws tied 0.3 and 0.4 in tenths (README)


def mix_weights(members: int, steps: int = STEPS) -> list[tuple[float, ...]]:
    """Every weighting of `members` members in steps of 1/`steps` that sums to 1, the first
    member's heaviest first (the choice's ties go to the first)."""

    def parts(k: int, total: int) -> list[tuple[int, ...]]:
        if k == 1:
            return [(total,)]
        return [(total - i, *rest) for i in range(total + 1) for rest in parts(k - 1, i)]

    return [tuple(n / steps for n in p) for p in parts(members, steps)]


@dataclass
class QuadrantParams:
    """`emotion.quadrant`: the categorical head (trained when pieces carry quadrant labels)."""

    hidden: int = 128
    dropout: float = 0.3
    epochs: int = 60
    batch_size: int = 32  # pieces per step (learning rate, weight decay: emotion's `train`)
    max_bars: int = 32  # bars per piece per step in training (a random window); all at inference
    piece_std: bool = False  # read the cues' piece-std columns (the head pools the bars itself)
    seeds: int = 5  # heads trained with seeds seed..seed + n - 1, served as their mean probability
    folds: int = 5  # song-grouped folds of train whose out-of-fold predictions choose the mix

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"emotion.quadrant.seeds must be >= 1, got {self.seeds}")
        if self.folds < 2:
            raise ValueError(f"emotion.quadrant.folds must be >= 2, got {self.folds}")


def head_input(x: np.ndarray, input_name: str, piece_std: bool) -> np.ndarray:
    """The head's per-bar input from the regressor's `input_name` input: without the cues'
    last block, each statistic's std over the piece, unless `piece_std` (on EMOPIA val, 3 head
    seeds each, they cost the head 0.64-0.66 against 0.68-0.70 without; README)."""
    if piece_std or input_name not in ("cues", "latents+cues"):
        return x
    return x[:, : x.shape[1] - len(BAR_STATS)]


def quadrant_of(piece_targets: np.ndarray) -> np.ndarray:
    """Quadrant index per piece from the signs of its (valence, arousal) label; -1 where
    either is unknown or 0."""
    v, a = piece_targets[:, 0], piece_targets[:, 1]
    known = np.isfinite(v) & np.isfinite(a) & (v != 0) & (a != 0)
    q = np.where(v > 0, np.where(a > 0, 0, 3), np.where(a > 0, 1, 2))
    return np.where(known, q, -1)


class QuadrantMLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.net = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, len(QUADRANTS)),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, width], mask [B, L] -> logits [B, 4], the mean of the bars' logits."""
        logits = self.net((x - self.mean) / self.std)
        m = mask.unsqueeze(-1).to(logits.dtype)
        return (logits * m).sum(1) / m.sum(1).clamp(min=1)


class QuadrantEnsemble(nn.Module):
    """Heads of different seeds; the logits are the log of their mean probability, so a
    softmax gives that mean back."""

    def __init__(self, members: list[QuadrantMLP]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x, mask), -1) for m in self.members]).mean(0)
        return torch.log(probs.clamp(min=1e-12))


def _pad(x: np.ndarray, offsets: np.ndarray, pieces: np.ndarray, spans=None):
    """[B, L, width] floats and [B, L] mask of these pieces' bars (or `spans`' windows)."""
    spans = spans or [(int(offsets[k]), int(offsets[k + 1])) for k in pieces]
    length = max(1, max(hi - lo for lo, hi in spans))
    out = np.zeros((len(spans), length, x.shape[1]), np.float32)
    mask = np.zeros((len(spans), length), bool)
    for i, (lo, hi) in enumerate(spans):
        out[i, : hi - lo] = x[lo:hi]
        mask[i, : hi - lo] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def fit(
    p: QuadrantParams,
    x: np.ndarray,
    offsets: np.ndarray,
    pieces: np.ndarray,
    labels: np.ndarray,
    tp: TrainParams,
) -> QuadrantMLP:
    """Train on `pieces` (indices into offsets) with quadrant `labels` (one per piece),
    class-balanced cross-entropy."""
    seed = tp.seed
    seed_everything(seed)
    model = QuadrantMLP(x.shape[1], p.hidden, p.dropout)
    rows = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in pieces])
    model.mean.copy_(torch.as_tensor(x[rows].mean(0)))
    model.std.copy_(torch.as_tensor(x[rows].std(0)).clamp(min=1e-6))
    counts = np.bincount(labels, minlength=len(QUADRANTS)).astype(float)
    weight = torch.tensor(
        np.where(counts > 0, len(labels) / (len(QUADRANTS) * np.maximum(counts, 1)), 0.0),
        dtype=torch.float32,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    steps = p.epochs * -(-len(pieces) // p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, tp.lr, total_steps=max(1, steps))
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(labels)
    model.train()
    for _ in range(p.epochs):
        order = rng.permutation(len(pieces))
        for lo in range(0, len(order), p.batch_size):
            idx = order[lo : lo + p.batch_size]
            spans = []
            for k in pieces[idx]:
                a, b = int(offsets[k]), int(offsets[k + 1])
                start = a + int(rng.integers(0, max(1, b - a - p.max_bars + 1)))
                spans.append((start, min(b, start + p.max_bars)))
            xb, mask = _pad(x, offsets, pieces[idx], spans)
            loss = F.cross_entropy(model(xb, mask), y[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def fit_ensemble(p: QuadrantParams, tp: TrainParams, *data: np.ndarray) -> QuadrantEnsemble:
    """`p.seeds` heads, each `fit` on `data` (x, offsets, pieces, labels) with seeds tp.seed,
    tp.seed + 1, ..."""
    seeds = range(tp.seed, tp.seed + p.seeds)
    return QuadrantEnsemble([fit(p, *data, dataclasses.replace(tp, seed=s)) for s in seeds])


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray, offsets: np.ndarray, pieces: np.ndarray):
    """[len(pieces), 4] quadrant probabilities from all of each piece's bars."""
    out = []
    for lo in range(0, len(pieces), 64):
        xb, mask = _pad(x, offsets, pieces[lo : lo + 64])
        out.append(torch.softmax(model(xb, mask), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(QUADRANTS)), np.float32)


def served_name(weights: dict[str, float]) -> str:
    """What a weighting serves: its members with a weight, joined by `+` (`mlp+factorised`)."""
    return "+".join(m for m in MEMBERS if weights.get(m, 0) > 0)


def served_probs(
    weights: dict[str, float], probs: dict[str, np.ndarray | None], pool: str = "linear"
) -> np.ndarray:
    """The served probabilities: the members' `probs` mixed by `pool` with `weights` (a
    member with weight 0 may be None or absent)."""
    if pool not in POOLS:
        raise ValueError(f"quadrant pool {pool!r} is not one of {POOLS}")
    used = [(w, probs[m]) for m, w in weights.items() if w > 0]
    if len(used) == 1:
        return used[0][1]
    if pool == "linear":
        return sum(w * p for w, p in used)
    logp = sum(w * np.log(np.maximum(p, 1e-12)) for w, p in used)
    out = np.exp(logp - logp.max(1, keepdims=True))
    return out / out.sum(1, keepdims=True)


def choose_mix(oof: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, tuple]:
    """Per pool, (best out-of-fold log-likelihood, its weights by member) over every
    weighting (`mix_weights`) of the members in `oof` (their out-of-fold probabilities, in
    `MEMBERS` order); ties go to the first, the heads' heaviest."""
    members = [m for m in MEMBERS if m in oof]
    best = {}
    for pool in POOLS:
        for w in mix_weights(len(members)):
            mix = dict(zip(members, w, strict=True))
            score = log_likelihood(served_probs(mix, oof, pool), labels)
            if pool not in best or score > best[pool][0]:
                best[pool] = (score, mix)
    return best


def axis_labels(labels: np.ndarray, axis: int) -> np.ndarray:
    """1 where the quadrant lies on the positive side of `AXES[axis]`, else 0."""
    return (SIGNS[labels, axis] > 0).astype(np.int64)


SIDES = ("negative", "positive")  # the binary axis models' classes


def fit_axes(feats: np.ndarray, labels: np.ndarray, c: dict, seed: int) -> dict:
    """The factorised member's binary logistic models on quadrant `labels`, by axis name
    (`AXES`), each with its own C (`c[axis]`): one place that pairs an axis with its labels."""
    return {
        axis: fit_linear(feats, axis_labels(labels, i), SIDES, c[axis], seed)
        for i, axis in enumerate(AXES)
    }


def positive(models: dict, feats: np.ndarray) -> dict:
    """P(positive side) [n] per axis name from `fit_axes`-style models."""
    return {a: m.predict_proba(feats)[:, SIDES.index("positive")] for a, m in models.items()}


def factorised(positive: dict) -> np.ndarray:
    """[n, 4] P(q) = P(valence side) P(arousal side) from each axis's P(positive side)
    (keyed by axis name, so the axes cannot be swapped by position)."""
    sides = [np.stack([1 - positive[a], positive[a]], 1) for a in AXES]
    pos = (SIGNS > 0).astype(np.int64)
    return sides[0][:, pos[:, 0]] * sides[1][:, pos[:, 1]]


def cue_summary(cues: np.ndarray) -> np.ndarray:
    """[2 * len(BAR_STATS)]: the mean and std over a piece's bars of its per-bar statistics,
    which the hand-crafted model reads beside `evaluation.features` (on EMOPIA val they lift
    it from 0.652 to 0.682; README): the piece-mean and piece-std blocks `rules.bar_cues`
    repeats on every bar (its last two), read off the first bar."""
    return cues[0, -2 * len(BAR_STATS) :]


CUE_SUMMARY = (*(f"{s}_mean" for s in BAR_STATS), *(f"{s}_std" for s in BAR_STATS))
# the hand-crafted model's input: `evaluation.features`, the clip's cue summary, and its chord
# qualities (`harmony`: on EMOPIA they lift it from 0.692 to 0.707 on val, and its out-of-fold
# accuracy on train from 0.659 to 0.685; README)
HANDCRAFTED = (*FEATURES, *CUE_SUMMARY, *HARMONY)


def handcrafted_row(score, cues: np.ndarray) -> np.ndarray:
    """[len(HANDCRAFTED)] of one piece from its score and its `rules.bar_cues`."""
    return np.concatenate([piece_features(score), cue_summary(cues), harmony_features(score)])


def handcrafted_matrix(music, cues: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[pieces, len(HANDCRAFTED)] of every piece's MIDI bytes (`music`) and its bars' cues; a
    piece whose score cannot be read keeps its cue summary and zeros elsewhere (logged)."""
    from tqdm import tqdm

    out = np.zeros((len(offsets) - 1, len(HANDCRAFTED)), np.float32)
    for k in tqdm(range(len(out)), desc="hand-crafted features", unit="piece", leave=False):
        bars = cues[offsets[k] : offsets[k + 1]]
        try:
            out[k] = handcrafted_row(load_score(music[k]), bars)
        except (BadMidi, ValueError) as exc:
            log.warning("hand-crafted features: piece %d: %s", k, exc)
            out[k, len(FEATURES) : len(FEATURES) + len(CUE_SUMMARY)] = cue_summary(bars)
    return out


def log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean log-probability of the true quadrant: the serving choice's score (steadier than
    accuracy on the ~150 pieces it is chosen on)."""
    return float(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-9)).mean())


def accuracies(probs: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    """4-quadrant accuracy and binary valence / arousal accuracy (sides' summed probabilities)."""
    out = {f"{prefix}quadrant_accuracy": float((probs.argmax(1) == labels).mean())}
    for i, axis in enumerate(("valence", "arousal")):
        positive = probs[:, SIGNS[:, i] > 0].sum(1) > 0.5
        out[f"{prefix}{axis}_accuracy"] = float((positive == (SIGNS[labels, i] > 0)).mean())
    return out


def save(model: QuadrantEnsemble, folder: str | Path, extra: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "quadrant.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    first = model.members[0]
    config = {
        "width": int(first.mean.shape[0]),
        "hidden": first.net[0].out_features,
        "members": len(model.members),
        "classes": list(QUADRANTS),
        **extra,
    }
    with atomic_path(folder / "quadrant.json") as tmp:
        tmp.write_text(json.dumps(config, indent=1) + "\n")


def load(folder: str | Path) -> nn.Module | None:
    """The saved heads (one head, as older models hold it, or an ensemble), or None when
    `folder` holds none."""
    folder = Path(folder)
    if not (folder / "quadrant.json").exists():
        return None
    config = json.loads((folder / "quadrant.json").read_text())

    def head() -> QuadrantMLP:
        return QuadrantMLP(config["width"], config["hidden"], 0.0)

    model = (
        QuadrantEnsemble([head() for _ in range(config["members"])])
        if "members" in config
        else head()
    )
    model.load_state_dict(load_file(str(folder / "quadrant.safetensors")))
    return model.eval()
