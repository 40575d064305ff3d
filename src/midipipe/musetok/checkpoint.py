"""Save/load MuseTok weights: our ``config.json`` + ``model.safetensors`` folders, and the official
``model.pt``.

The reference training script stores ``torch.save(model.state_dict(), ...)``: a plain state_dict
with no config (the run's yaml is copied next to the checkpoints as ``config.yaml``).  So for a
``.pt`` file the config comes from, in order: the ``config`` argument, a sibling ``config.json``
(ours) or ``config.yaml`` (reference yaml with ``model``/``data`` sections), or the tensor shapes.
Shapes give every size except the number of attention heads, which is taken as the official 8
when d_model is the official 512 and must otherwise be passed as ``n_head``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from midipipe.core.errors import ParamError
from midipipe.musetok.model import MuseTok, MuseTokConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OFFICIAL_FILE = "model.pt"
_SHOW = 5  # keys listed per category in a mismatch message


class CheckpointMismatch(ValueError):
    """State_dict keys or shapes do not fit the model built from the config."""


def save(model: MuseTok, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``; returns it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "midipipe.musetok"})
    (out / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=1) + "\n")
    return out


def load(
    path: str | Path,
    config: MuseTokConfig | None = None,
    n_head: int | None = None,
    device: str | torch.device = "cpu",
) -> MuseTok:
    """Load a model in eval mode from a folder (``config.json`` + ``model.safetensors``, or an
    official ``model.pt``), a ``.safetensors`` file, or a torch ``.pt`` checkpoint."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).exists():
            path = path / WEIGHTS_FILE
        elif (path / OFFICIAL_FILE).exists():
            path = path / OFFICIAL_FILE
        else:
            raise FileNotFoundError(f"no {WEIGHTS_FILE} or {OFFICIAL_FILE} in {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    cfg = config or _sibling_config(path.parent, state) or infer_config(state, n_head=n_head)
    model = MuseTok(cfg)
    load_state_dict_checked(model, state)
    return model.to(device).eval()


def load_matching(path: str | Path, config: MuseTokConfig, param: str) -> MuseTok:
    """Our safetensors folder at `path` as a model of `config` (to start training from it);
    `ParamError` naming `param` when the folder holds no weights or another architecture."""
    folder = Path(path)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise ParamError(
            f"{param}: {folder} holds no {WEIGHTS_FILE} + {CONFIG_FILE} "
            "(make pretrain-musetok writes them)"
        )
    saved = MuseTokConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    if saved != config:
        want, got = config.to_dict(), saved.to_dict()
        diff = ", ".join(f"{k} {got[k]} (here {want[k]})" for k in want if want[k] != got[k])
        raise ParamError(f"{param}: {folder} is another architecture: {diff}")
    model = MuseTok(config)
    load_state_dict_checked(model, load_file(str(folder / WEIGHTS_FILE)))
    return model


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the state_dict inside a loaded checkpoint (plain, or under a common key), with a
    DataParallel ``module.`` prefix removed."""
    if isinstance(obj, Mapping) and obj and not all(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model", "params"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointMismatch("checkpoint does not hold a state_dict of tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _sibling_config(folder: Path, state: Mapping[str, torch.Tensor]) -> MuseTokConfig | None:
    if (folder / CONFIG_FILE).exists():
        return MuseTokConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    if (folder / "config.yaml").exists():
        import yaml

        data = yaml.safe_load((folder / "config.yaml").read_text())
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            flat = {**data.get("data", {}), **data["model"]}
            if "pe.pe" in state:  # the yaml cannot set the sinusoid length
                flat["max_pos"] = state["pe.pe"].shape[0]
            return MuseTokConfig.from_dict(flat)
    return None


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_config(
    state: Mapping[str, torch.Tensor], n_head: int | None = None, **overrides: Any
) -> MuseTokConfig:
    """Sizes from tensor shapes.  Head counts are not visible in the weights: ``n_head`` (both
    stacks) defaults to the official 8 when d_model is 512, otherwise it is required."""
    try:
        n_token, d_model = state["token_emb.emb_lookup.weight"].shape
        d_latent = state["enc_out_proj.weight"].shape[0]
        codebook_size = state["residual_sim_vq.layers.0.frozen_codebook"].shape[0]
        enc_d_ff = state["encoder.tr_encoder.layers.0.linear1.weight"].shape[0]
        dec_d_ff = state["decoder.decoder_layers.0.linear1.weight"].shape[0]
        max_pos = state["pe.pe"].shape[0]
    except KeyError as err:
        raise CheckpointMismatch(f"cannot infer the config: missing key {err}") from None
    default = MuseTokConfig.official()
    if n_head is None:
        if d_model != default.enc_d_model:
            raise ValueError(
                f"d_model is {d_model}, not the official {default.enc_d_model}: the number of "
                "attention heads cannot be read from the weights, pass n_head= or a config"
            )
        n_head = default.enc_n_head
    sizes = dict(
        enc_n_layer=_count_layers(state, "encoder.tr_encoder.layers."),
        enc_n_head=n_head,
        enc_d_model=d_model,
        enc_d_ff=enc_d_ff,
        dec_n_layer=_count_layers(state, "decoder.decoder_layers."),
        dec_n_head=n_head,
        dec_d_model=d_model,
        dec_d_ff=dec_d_ff,
        d_latent=d_latent,
        d_embed=d_model,
        n_token=n_token,
        pad_id=n_token - 1,
        num_quantizers=_count_layers(state, "residual_sim_vq.layers."),
        codebook_size=codebook_size,
        max_pos=max_pos,
    )
    sizes.update(overrides)
    return MuseTokConfig(**sizes)


def mismatch_report(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """A short description of missing / unexpected / wrong-shape keys, or None if they fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
            parts.append(f"{len(keys)} {label}: " + ", ".join(keys[:_SHOW]) + more)
    return "; ".join(parts) if parts else None


def load_state_dict_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` that reports mismatches as ``CheckpointMismatch``."""
    report = mismatch_report(model, state)
    if report:
        raise CheckpointMismatch(f"checkpoint does not match the model: {report}")
    model.load_state_dict(state, strict=True)
