"""One training loop for every model: AdamW, warm-up + cosine, clipping, autocast, exact resume.

A model section of params.yaml gives a `TrainParams` (shared `train` defaults plus its
overrides). The loop saves, every epoch, the weights as safetensors and the optimizer,
scheduler, step and RNG state as a torch file loaded back with `weights_only=True`, in a
resume folder outside DVC's outputs (DVC deletes those before a stage runs), so an
interrupted run (a crash or Ctrl+C) continues where it stopped and ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from midipipe.core.device import autocast_dtype, resolve_device, seed_everything
from midipipe.core.io import atomic_path
from midipipe.core.params import TrainParams
from midipipe.training import distributed as ddp

log = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, tp: TrainParams) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, norms or embeddings' scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": tp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tp.lr)


def warmup_cosine(
    total_steps: int, warmup_frac: float, floor: float = 0.0
) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to `floor` (a fraction of the peak lr)."""
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass
class Fit:
    """What a stage needs to train one model with `fit`."""

    model: nn.Module
    train_batches: Callable[[int, torch.Generator], Iterable]  # (epoch, rng) -> batches
    steps_per_epoch: int
    loss: Callable[[nn.Module, object], tuple[torch.Tensor, dict[str, float]]]
    evaluate: Callable[[nn.Module], dict[str, float]]  # valid metrics after each epoch
    best_key: str = "valid_loss"
    best_mode: str = "min"
    history: list[dict] = field(default_factory=list)
    # `train_batches` yields micro-batches; `grad_accum` of them (per process) make one
    # optimizer step, and `steps_per_epoch` counts steps in one process
    grad_accum: int = 1
    # a micro-batch's share of its step (e.g. its target tokens; None = equal shares), so
    # an accumulated step is the same as one big batch; epoch rows sum it as `train_size`
    micro_weight: Callable[[object], float] | None = None
    # `train_batches` yields this process's own micro-batches (a per-rank data shard, the
    # same count in every process) rather than every process's, of which each takes a share
    sharded: bool = False


def step_groups(batches: Iterable, size: int) -> Iterator[list]:
    """Consecutive groups of `size` micro-batches (the last one may be shorter)."""
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def accumulate(
    job: Fit, net: nn.Module, group: Sequence, amp: torch.dtype | None, scaler
) -> tuple[float, dict[str, float], float]:
    """Backward of this process's share of one step's micro-batches, gradients summed as if
    they were one batch: each micro-batch loss weighted by its share of the whole step's
    weight (every process sees the same group, or with `job.sharded` its own, the total
    summed over processes), times the process count that DDP's gradient average divides by.
    Returns (loss, weighted logs, the step's weight)."""
    world, me = ddp.world_size(), ddp.rank()
    weights = [job.micro_weight(b) if job.micro_weight else 1.0 for b in group]
    device = next(net.parameters()).device
    total = (ddp.all_sum(sum(weights), device) if job.sharded else sum(weights)) or 1.0
    mine = list(range(len(group))) if job.sharded else list(range(me, len(group), world))
    loss_sum, logs = 0.0, {}
    for n, i in enumerate(mine):
        share = weights[i] / total
        sync = n == len(mine) - 1 or not isinstance(net, DistributedDataParallel)
        autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
        with contextlib.nullcontext() if sync else net.no_sync():
            with autocast:
                loss, micro_logs = job.loss(net, to_device(group[i], device))
            scaler.scale(loss * share * world).backward()
        loss_sum += loss.item() * share * world
        for k, v in micro_logs.items():
            logs[k] = logs.get(k, 0.0) + v * share * world
    return loss_sum, logs, total if job.sharded else sum(weights)


def to_device(batch, device: torch.device):
    """A dict batch's tensors on `device`, copied without blocking (from pinned memory)."""
    if not isinstance(batch, dict):
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _save_weights(model: nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))


def _save_resume(
    out: Path,
    model: nn.Module,
    opt,
    sched,
    epoch: int,
    step: int,
    rng: torch.Generator,
    history: list[dict],
    best: float | None,
    fingerprint: str,
) -> None:
    _save_weights(model, out / "model.safetensors")
    state = {
        "fingerprint": fingerprint,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "step": step,
        "rng": rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": json.dumps(random.getstate()),
        "history": json.dumps(history),
        "best": best if best is not None else float("nan"),
    }
    with atomic_path(out / "state.pt") as tmp:
        torch.save(state, tmp)


def _python_rng(state: str):
    version, internal, gauss = json.loads(state)
    return version, tuple(internal), gauss


def fit(
    job: Fit,
    tp: TrainParams,
    resume_dir: str | Path,
    save_best: Callable[[nn.Module], None],
    fingerprint: dict | None = None,
) -> Fit:
    """Train `job.model` for `tp.epochs`, resuming from `resume_dir` when it holds the state of
    an interrupted run with the same `fingerprint` (params and data); cleared on success.

    At the end the model holds the weights of its best epoch on `job.best_key`, and
    `save_best` is called with it. Under `torchrun` the processes train one
    DistributedDataParallel model, each on its share of every step's micro-batches; the
    main one validates, keeps the resume state and calls `save_best` (resume is exact in
    a single process; with several, dropout draws after a resume differ).
    """
    device = ddp.local_device(resolve_device(tp.device))
    with ddp.process_group(device):
        return _fit(job, tp, Path(resume_dir), save_best, fingerprint, device)


def _fit(
    job: Fit,
    tp: TrainParams,
    out: Path,
    save_best: Callable[[nn.Module], None],
    fingerprint: dict | None,
    device: torch.device,
) -> Fit:
    key = json.dumps(
        {"train": dataclasses.asdict(tp), **(fingerprint or {})}, sort_keys=True, default=str
    )
    main, world = ddp.is_main(), ddp.world_size()
    amp = autocast_dtype(tp.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = job.model.to(device)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    opt = make_optimizer(model, tp)
    steps_per_epoch = -(-job.steps_per_epoch // world)  # each step takes `world` x the batches
    total = tp.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(total, tp.warmup_frac, tp.min_lr / tp.lr if tp.lr else 0.0)
    )
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16)
    rng = torch.Generator().manual_seed(tp.seed)  # the same batches in every process
    seed_everything(tp.seed + ddp.rank())  # different dropout in each
    start_epoch, step, best = 0, 0, None

    state = (
        torch.load(out / "state.pt", map_location="cpu", weights_only=True)
        if (out / "state.pt").exists()
        else None
    )
    if state is not None and state["fingerprint"] != key:
        log.info("ignoring resume state in %s: params or data changed", out)
        state = None
    if state is not None:
        model.load_state_dict(load_file(str(out / "model.safetensors"), device=str(device)))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_python_rng(state["python_rng"]))
        start_epoch, step = state["epoch"] + 1, state["step"]
        job.history = json.loads(state["history"])
        best = None if math.isnan(state["best"]) else state["best"]
        log.info("resuming from epoch %d (step %d)", start_epoch, step)

    better = (lambda a, b: a < b) if job.best_mode == "min" else (lambda a, b: a > b)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, tp.epochs):
            model.train()
            t0, sums, n, size = time.perf_counter(), {}, 0, 0.0
            bar = tqdm(
                step_groups(
                    job.train_batches(epoch, rng), job.grad_accum * (1 if job.sharded else world)
                ),
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{tp.epochs}",
                unit="step",
                leave=False,
                disable=not main,
            )
            for group in bar:
                if len(group) < world and not job.sharded:  # a process would sit idle
                    continue
                opt.zero_grad(set_to_none=True)
                loss, logs, weight = accumulate(job, net, group, amp, scaler)
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                n += 1
                size += weight
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{loss:.3f}")
            model.eval()
            valid = None
            if main:
                with torch.inference_mode():
                    valid = job.evaluate(model)
            valid = ddp.from_main(valid)
            row = {
                "epoch": epoch + 1,
                "step": step,
                "lr": sched.get_last_lr()[0],
                **{f"train_{k}": v / max(1, n) for k, v in sums.items()},
                **({"train_size": size} if job.micro_weight else {}),
                **valid,
                "epoch_s": round(time.perf_counter() - t0, 2),
            }
            job.history.append(row)
            if main:
                log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
            if best is None or better(valid[job.best_key], best):
                best = valid[job.best_key]
                if main:
                    _save_weights(model, out / "best.safetensors")
            if main:
                _save_resume(out, model, opt, sched, epoch, step, rng, job.history, best, key)
    except KeyboardInterrupt:
        log.warning(
            "interrupted in epoch %d: the last finished epoch is saved in %s; run again to resume",
            epoch + 1,
            out,
        )
        raise SystemExit(130) from None
    if main:
        if (out / "best.safetensors").exists():
            model.load_state_dict(load_file(str(out / "best.safetensors"), device=str(device)))
        save_best(model)
        shutil.rmtree(out, ignore_errors=True)
    return job
