"""A small MLP from per-bar inputs (the bar and `window` neighbours either side, within its
piece) to valence and arousal, two tanh outputs, trained with MSE or 1 - CCC.

Inputs (`INPUTS`), the MuseTok `LATENTS`: `quantized` (the RVQ latent, stage 04's default),
`encoder_out` (the encoder's hidden state before the latent projection) or `codes`; `cues`,
`rules.bar_cues` (the five rule cues and twelve further statistics of each bar, their local and
whole-piece means and stds: MuseTok's events carry no tempo or velocity); or `latents+cues`, the
quantized latent and the cues side by side, so the MLP may draw on the latent for what the cues
miss. Codes are read as an embedding sum: one learned vector per (level, code), summed over the
residual levels, which is a linear layer on their one-hot concatenation. (Looking the codes up
in the codebooks would only give back the quantized latent.) Float inputs are standardised with
the training bars' mean and std, which are saved with the weights; bars outside the piece are
zero (the mean) in the window.

Beside the MLP, a ridge regression on the bar's own standardised input (its strength chosen by
piece-grouped folds of the training bars, fitted in closed form) is mixed into the output with
weight `linear_mix`: the two err differently, and on VGMIDI their mean beats either (README).

Saved as `model.safetensors` + `config.json`, `estimator` as `estimator_of` names it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from midipipe.core.device import inference_mode, resolve_device, seed_everything
from midipipe.core.io import atomic_path
from midipipe.core.params import TrainParams
from midipipe.emotion.rules import CUE_COLUMNS
from midipipe.musetok import checkpoint
from midipipe.musetok.encode import encode_pieces
from midipipe.musetok.model import MuseTokConfig
from midipipe.training.fit import make_optimizer, warmup_cosine

log = logging.getLogger(__name__)

LATENTS = ("quantized", "encoder_out", "codes")
CUES, LATENTS_CUES = "cues", "latents+cues"
INPUTS = (*LATENTS, CUES, LATENTS_CUES)
LOSSES = ("ccc", "mse")


@dataclass
class MLPParams:
    """`emotion.mlp`: what the regressor reads and its size."""

    input: str = LATENTS_CUES  # quantized | encoder_out | codes | cues | latents+cues
    window: int = 2  # neighbouring bars either side concatenated to the bar's input
    hidden: int = 128
    code_dim: int = 32  # embedding width per code (input: codes)
    dropout: float = 0.2
    loss: str = "ccc"  # ccc (1 - concordance, per axis, averaged) | mse
    linear_mix: float = 0.5  # weight of a ridge regression on the bar's input in the output

    def __post_init__(self) -> None:
        if not 0 <= self.linear_mix <= 1:
            raise ValueError(f"emotion.mlp.linear_mix must be in [0, 1], got {self.linear_mix}")
        if self.input not in INPUTS:
            raise ValueError(f"emotion.mlp.input must be one of {INPUTS}, got {self.input!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"emotion.mlp.loss must be one of {LOSSES}, got {self.loss!r}")


def estimator_of(input_name: str) -> str:
    """What every output of an MLP on this input is labelled with."""
    return {CUES: "mlp_cues", LATENTS_CUES: "mlp_latents+cues"}.get(input_name, "mlp_latents")


def latent_of(input_name: str) -> str | None:
    """The MuseTok latent an input reads (None: the cues alone, no encoder needed)."""
    if input_name == LATENTS_CUES:
        return "quantized"
    return input_name if input_name in LATENTS else None


def reads_cues(input_name: str) -> bool:
    return input_name in (CUES, LATENTS_CUES)


def assemble(
    input_name: str, latents: dict[str, np.ndarray], cues: np.ndarray | None
) -> np.ndarray:
    """The per-bar input `input_name` from MuseTok's (`inputs_of`) and the rule cues'."""
    if input_name == CUES:
        return cues
    if input_name == LATENTS_CUES:
        return np.concatenate([latents["quantized"], cues], 1).astype(np.float32)
    return latents[input_name]


def input_width(input_name: str, musetok: MuseTokConfig | None) -> int:
    """Width of an input given the MuseTok config (None for `cues`): what a trained MLP on it
    must have been built with."""
    width = len(CUE_COLUMNS) if reads_cues(input_name) else 0
    latent = latent_of(input_name)
    if latent == "quantized":
        width += musetok.d_latent
    elif latent == "encoder_out":
        width += musetok.enc_d_model
    elif latent == "codes":
        width += musetok.num_quantizers
    return width


@dataclass
class MLPConfig:
    """Everything needed to rebuild the module (config.json `mlp`)."""

    input: str
    width: int  # feature size, or the number of residual levels for codes
    codebook_size: int = 0  # codes only
    window: int = 1
    hidden: int = 128
    code_dim: int = 32
    dropout: float = 0.2
    linear_mix: float = 0.0  # 0 for codes, and for models saved before it existed


RIDGE_ALPHAS = np.logspace(-4, 1, 11)  # per unit of bar weight, on standardised inputs


class EmotionMLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.input == "codes":
            self.codes = nn.Embedding(cfg.width * cfg.codebook_size, cfg.code_dim)
            self.register_buffer("level_offset", torch.arange(cfg.width) * cfg.codebook_size)
            bar_width = cfg.code_dim
        else:
            self.register_buffer("mean", torch.zeros(cfg.width))
            self.register_buffer("std", torch.ones(cfg.width))
            bar_width = cfg.width
        if cfg.linear_mix:  # only then: a model saved without the ridge still loads
            self.register_buffer("ridge_w", torch.zeros(cfg.width, 2))
            self.register_buffer("ridge_b", torch.zeros(2))
        self.net = nn.Sequential(
            nn.Linear((2 * cfg.window + 1) * bar_width, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 2),
        )

    def branches(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's output and the bar's standardised input (what the ridge reads)."""
        if self.cfg.input == "codes":
            h = self.codes(x + self.level_offset).sum(-2)
        else:
            h = (x - self.mean) / self.std
        h = h * valid.unsqueeze(-1)
        return torch.tanh(self.net(h.flatten(1))), h[:, self.cfg.window]

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: [B, W, width] floats or codes; valid: [B, W] (False outside the piece). The MLP,
        mixed with the ridge regression by `linear_mix`."""
        out, bar = self.branches(x, valid)
        if not self.cfg.linear_mix:
            return out
        ridge = (bar @ self.ridge_w + self.ridge_b).clamp(-1, 1)
        return (1 - self.cfg.linear_mix) * out + self.cfg.linear_mix * ridge


def windows(offsets: np.ndarray, k: int) -> np.ndarray:
    """[bars, 2k+1]: each bar's row and its neighbours' within its piece, -1 outside."""
    n_bars = int(offsets[-1])
    piece = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    rows = np.arange(n_bars)[:, None] + np.arange(-k, k + 1)[None, :]
    inside = (rows >= offsets[piece][:, None]) & (rows < offsets[piece + 1][:, None])
    return np.where(inside, rows, -1)


def _gather(x: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = win >= 0
    return x[win.clamp(min=0)], valid


def concordance(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Lin's concordance correlation per column of [N, K] (population moments, optional
    per-row weights): 2 cov / (var_pred + var_target + (mean_pred - mean_target)^2)."""
    w = torch.ones(len(pred), dtype=pred.dtype) if weight is None else weight.to(pred.dtype)
    w = (w / w.sum()).unsqueeze(-1)
    mp, mt = (w * pred).sum(0), (w * target).sum(0)
    vp, vt = (w * (pred - mp) ** 2).sum(0), (w * (target - mt) ** 2).sum(0)
    cov = (w * (pred - mp) * (target - mt)).sum(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-12)


def loss_fn(kind: str, pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if kind == "ccc":
        return 1 - concordance(pred, target, w).mean()
    return (w * ((pred - target) ** 2).mean(-1)).sum() / w.sum()


def ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """[width + 1, 2]: weighted ridge coefficients, then the intercept, of y on z."""
    zm, ym = (w @ z) / w.sum(), (w @ y) / w.sum()
    zc = z - zm
    gram = zc.T @ (w[:, None] * zc) + alpha * w.sum() * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, zc.T @ (w[:, None] * (y - ym)))
    return np.vstack([coef, ym - zm @ coef])


def fit_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, pieces: np.ndarray, seed: int):
    """The ridge branch on standardised bar inputs `z`, its strength chosen by the mean CCC
    over 4 piece-grouped folds of these training bars (neighbouring bars of a piece are
    alike, so a bar-wise split would favour too little regularisation)."""
    from sklearn.model_selection import GroupKFold

    folds = min(4, len(set(pieces.tolist())))
    if folds < 2:
        return ridge(z, y, w, RIDGE_ALPHAS[-1])
    splits = list(GroupKFold(folds, shuffle=True, random_state=seed).split(z, groups=pieces))

    def score(alpha: float) -> float:
        pred = np.zeros_like(y)
        for tr, te in splits:
            coef = ridge(z[tr], y[tr], w[tr], alpha)
            pred[te] = np.clip(z[te] @ coef[:-1] + coef[-1], -1, 1)
        t = torch.as_tensor
        return float(concordance(t(pred), t(y), t(w)).mean())

    best = max(RIDGE_ALPHAS, key=score)
    return ridge(z, y, w, best)


def config_for(p: MLPParams, x: np.ndarray, codebook_size: int = 0) -> MLPConfig:
    return MLPConfig(
        input=p.input,
        width=x.shape[1],
        codebook_size=codebook_size,
        window=p.window,
        hidden=p.hidden,
        code_dim=p.code_dim,
        dropout=p.dropout,
        linear_mix=0.0 if p.input == "codes" else p.linear_mix,
    )


def fit_mlp(
    cfg: MLPConfig,
    x: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    rows: np.ndarray,
    tp: TrainParams,
    loss: str,
) -> EmotionMLP:
    """Train on bar `rows` (weights > 0) of the flat per-bar input `x`; neighbours in the
    window may be any bar of the same piece, labelled or not."""
    seed_everything(tp.seed)
    model = EmotionMLP(cfg)
    xt = torch.as_tensor(x, dtype=torch.long if cfg.input == "codes" else torch.float32)
    if cfg.input != "codes":
        model.mean.copy_(xt[rows].mean(0))
        model.std.copy_(xt[rows].std(0).clamp(min=1e-6))
    if cfg.linear_mix:
        z = ((xt[rows] - model.mean) / model.std).double().numpy()
        piece = np.searchsorted(offsets, rows, side="right") - 1
        coef = fit_ridge(z, targets[rows], weights[rows].astype(np.float64), piece, tp.seed)
        model.ridge_w.copy_(torch.as_tensor(coef[:-1]))
        model.ridge_b.copy_(torch.as_tensor(coef[-1]))
    device = resolve_device(tp.device)
    model.to(device)
    win = torch.as_tensor(windows(offsets, cfg.window))
    y = torch.as_tensor(targets, dtype=torch.float32)
    w = torch.as_tensor(weights, dtype=torch.float32)
    n_batches = max(1, len(rows) // tp.batch_size)  # no tiny remainder batch (CCC needs spread)
    opt = make_optimizer(model, tp)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(tp.epochs * n_batches, tp.warmup_frac, tp.min_lr / tp.lr if tp.lr else 0)
    )
    rng = torch.Generator().manual_seed(tp.seed)
    rows_t = torch.as_tensor(rows)
    model.train()
    for _ in range(tp.epochs):
        for batch in rows_t[torch.randperm(len(rows_t), generator=rng)].chunk(n_batches):
            xb, valid = _gather(xt, win[batch])
            pred, _ = model.branches(xb.to(device), valid.to(device))  # the MLP alone
            value = loss_fn(loss, pred, y[batch].to(device), w[batch].to(device))
            opt.zero_grad(set_to_none=True)
            value.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            opt.step()
            sched.step()
    return model.cpu().eval()


def predict(
    model: EmotionMLP,
    x: np.ndarray,
    offsets: np.ndarray,
    rows: np.ndarray | None = None,
    batch_size: int = 8192,
) -> np.ndarray:
    """[len(rows), 2] valence, arousal of bar `rows` (all bars by default)."""
    xt = torch.as_tensor(x, dtype=torch.long if model.cfg.input == "codes" else torch.float32)
    win = torch.as_tensor(windows(offsets, model.cfg.window))
    rows_t = torch.arange(len(xt)) if rows is None else torch.as_tensor(rows)
    device = next(model.parameters()).device
    out = []
    with inference_mode(device):
        for batch in rows_t.split(batch_size):
            xb, valid = _gather(xt, win[batch])
            out.append(model(xb.to(device), valid.to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2), np.float32)


def save(model: EmotionMLP, folder: str | Path, extra: dict) -> None:
    """`model.safetensors` + `config.json` (the module's config plus `extra` facts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp), metadata={"estimator": estimator_of(model.cfg.input)})
    config = {
        "estimator": estimator_of(model.cfg.input),
        "mlp": dataclasses.asdict(model.cfg),
        **extra,
    }
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=1) + "\n")


def load(folder: str | Path) -> EmotionMLP:
    config = json.loads((Path(folder) / "config.json").read_text())
    model = EmotionMLP(MLPConfig(**config["mlp"]))
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model.eval()


def inputs_of(encoded) -> dict[str, np.ndarray]:
    """The three per-bar inputs of one `encode_pieces` result."""
    return {
        "quantized": encoded.latents,
        "encoder_out": encoded.encoder_out,
        "codes": encoded.codes,
    }


def encode_inputs(
    musetok_dir: str | Path,
    tokens: list[tuple[list[int], list[int]]],
    device: str = "auto",
    batch_size: int = 256,
) -> tuple[dict[str, np.ndarray], int]:
    """All three inputs of every bar of `tokens` (pieces concatenated), and the codebook size."""
    on = resolve_device(device)
    model = checkpoint.load(musetok_dir).to(on).eval()
    with inference_mode(on):
        parts = [inputs_of(out) for out in encode_pieces(model, tokens, batch_size)]
    flat = {k: np.concatenate([p[k] for p in parts]) for k in LATENTS}
    return flat, model.config.codebook_size


def stored_inputs(latents_dir: str | Path, piece_ids: list[str]) -> dict[str, np.ndarray] | None:
    """Stage 04's representation and codes for these pieces (flat, in order), or None when a
    piece is missing."""
    folder = Path(latents_dir)
    if not (folder / "index.parquet").exists():
        return None
    index = {r["piece_id"]: r for r in pq.read_table(folder / "index.parquet").to_pylist()}
    if any(pid not in index for pid in piece_ids):
        return None
    parts: dict[str, dict] = {}
    for part in {index[pid]["part"] for pid in piece_ids}:
        with safe_open(str(folder / part), "np") as f:
            name = (f.metadata() or {}).get("representation", "quantized")
        parts[part] = {**load_file(str(folder / part)), "name": name}
    out: dict[str, list] = {}
    for pid in piece_ids:
        r = index[pid]
        t = parts[r["part"]]
        span = slice(r["start"], r["start"] + r["n_bars"])
        out.setdefault(t["name"], []).append(t["latents"][span].numpy())
        out.setdefault("codes", []).append(t["codes"][span].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def bar_inputs(
    names: set[str],
    piece_ids: list[str],
    tokens: list[tuple[list[int], list[int]]],
    latents_dir: str | Path,
    musetok_dir: str | Path,
    device: str = "auto",
) -> tuple[dict[str, np.ndarray], int]:
    """The latent `names` inputs of these pieces' bars: stage 04's when it holds them all,
    otherwise re-encoded from `tokens` with the MuseTok model (which gives all three)."""
    if not names:
        return {}, 0
    stored = stored_inputs(latents_dir, piece_ids) if piece_ids else None
    codebook = json.loads((Path(musetok_dir) / "config.json").read_text())["codebook_size"]
    if stored is not None and names <= set(stored):
        return stored, codebook
    log.info("re-encoding %d pieces with %s for inputs %s", len(tokens), musetok_dir, sorted(names))
    return encode_inputs(musetok_dir, tokens, device)
