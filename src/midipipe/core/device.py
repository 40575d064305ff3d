"""Which device a model runs on, with which precision and how many threads."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA when it is supported (auto), never on CPU unless asked for."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA: fp32 range at tensor-core speed."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def inference_mode(device: torch.device, precision: str = "auto"):
    """Everything a forward pass without gradients wants: `torch.inference_mode`, TF32 and
    autocast to bf16 (fp16 where bf16 is missing) on CUDA; plain fp32 on CPU unless
    `precision` asks otherwise."""
    enable_tf32(device)
    dtype = autocast_dtype(precision, device)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        yield


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch's intra-op thread count set to `n` inside, the caller's restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
