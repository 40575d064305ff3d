"""A training checkpoint written as one atomic unit, so a kill at any instant resumes exactly.

The unit is a folder: `model.safetensors` (the weights), `best.safetensors` (the best
epoch's weights, when there is one), `state.pt` (optimizer, scheduler, GradScaler and the
torch RNG states: tensors, loaded back with `weights_only=True`) and `meta.json` (step,
epoch, the data position within it, the NumPy and Python RNG states, the history and the
fingerprint of params and data). It is written as `ckpt.tmp/` and renamed into place; the
previous unit stays as `ckpt.old/` until the new one is in, so one complete unit always
exists on disk.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

CURRENT, OLD, TMP = "ckpt", "ckpt.old", "ckpt.tmp"
WEIGHTS, BEST, STATE, META = "model.safetensors", "best.safetensors", "state.pt", "meta.json"


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's state dict as CPU tensors safetensors can write."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def global_rngs() -> tuple[dict, dict]:
    """The process-wide RNG states: (tensors for state.pt, JSON for meta.json)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    plain = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": json.loads(json.dumps(random.getstate())),
    }
    return tensors, plain


def set_global_rngs(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        states = tensors["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


def _scalar(value):
    """NumPy and torch scalars in metrics and logs, as the Python numbers JSON holds."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a checkpoint's meta.json")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(
    out: Path,
    model_weights: dict[str, torch.Tensor],
    state: dict,
    meta: dict,
    best: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write one unit; `best` None keeps the previous unit's best weights."""
    out.mkdir(parents=True, exist_ok=True)
    tmp, current, old = out / TMP, out / CURRENT, out / OLD
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_weights, str(tmp / WEIGHTS))
    previous = found(out)
    if best is not None:
        save_file(best, str(tmp / BEST))
    elif previous is not None and (previous / BEST).exists():
        shutil.copyfile(previous / BEST, tmp / BEST)
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, default=_scalar))
    for f in (WEIGHTS, BEST, STATE, META):
        if (tmp / f).exists():
            _fsync(tmp / f)
    if current.exists():
        shutil.rmtree(old, ignore_errors=True)
        current.rename(old)
    tmp.rename(current)
    _fsync(out)
    shutil.rmtree(old, ignore_errors=True)


def found(out: Path) -> Path | None:
    """The complete unit in `out`: the current one, or the previous one when a kill came
    between the two renames."""
    for name in (CURRENT, OLD):
        if (out / name / META).exists():
            return out / name
    return None


@dataclass
class Saved:
    folder: Path
    meta: dict

    def state(self) -> dict:
        return torch.load(self.folder / STATE, map_location="cpu", weights_only=True)


def read(out: Path) -> Saved | None:
    folder = found(out)
    if folder is None:
        return None
    return Saved(folder, json.loads((folder / META).read_text()))
