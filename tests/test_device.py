"""Device helpers: inference precision, and which GPU each torchrun process binds."""

from __future__ import annotations

import torch

from midipipe.core.device import inference_mode
from midipipe.training import distributed as ddp


def test_inference_mode_is_fp32_on_cpu_unless_asked():
    layer = torch.nn.Linear(4, 4)
    x = torch.ones(2, 4)
    with inference_mode(torch.device("cpu")):
        y = layer(x)
        assert torch.is_inference_mode_enabled()
    assert y.dtype == torch.float32 and not y.requires_grad
    with inference_mode(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16


def test_each_process_binds_its_local_gpu_before_nccl(monkeypatch):
    """Under torchrun with LOCAL_RANK=1 the process makes cuda:1 current and hands it to
    NCCL, so no collective lands on GPU 0 (what made every rank use one GPU before)."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        ddp.dist,
        "init_process_group",
        lambda backend, **kw: calls.append(("init", backend, kw.get("device_id"))),
    )
    monkeypatch.setattr(ddp.dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    device = ddp.local_device(torch.device("cuda"))
    assert device == torch.device("cuda", 1)
    with ddp.process_group(device):
        pass
    gpu1 = torch.device("cuda", 1)
    assert calls[0] == ("set_device", gpu1)
    assert ("init", "nccl", gpu1) in calls and calls[-1] == ("destroy",)
    assert calls.index(("init", "nccl", gpu1)) > 0  # the device was set first
