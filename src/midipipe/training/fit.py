"""One training loop for every model: AdamW, warm-up + cosine, clipping, autocast, exact resume.

A model section of params.yaml gives a `TrainParams` (shared `train` defaults plus its
overrides). Every `checkpoint_every` steps and at every epoch's end the loop writes a
checkpoint (`training.checkpoint`: weights, optimizer, scheduler, GradScaler, step, the data
position within the epoch and every RNG, as one atomic unit) in a resume folder outside
DVC's outputs (DVC deletes those before a stage runs), so a run killed at any instant
continues where its last checkpoint stood and ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from midipipe.core.device import autocast_dtype, enable_tf32, resolve_device, seed_everything
from midipipe.core.params import TrainParams
from midipipe.training import checkpoint
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
    main one validates, writes the checkpoints and calls `save_best` (resume is exact in
    a single process; with several, the other processes' dropout draws after a resume
    differ).
    """
    device = ddp.local_device(resolve_device(tp.device))
    with ddp.process_group(device):
        return _fit(job, tp, Path(resume_dir), save_best, fingerprint, device)


def _fingerprint(tp: TrainParams, extra: dict | None) -> str:
    """Params and data a checkpoint is only valid for (not how often it is written)."""
    train = {k: v for k, v in dataclasses.asdict(tp).items() if k != "checkpoint_every"}
    return json.dumps({"train": train, **(extra or {})}, sort_keys=True, default=str)


@dataclass
class _Progress:
    """Where training stands: what a checkpoint holds besides weights and optimizer."""

    epoch: int = 0  # the epoch under way (or next)
    position: int = 0  # step groups of it already consumed
    step: int = 0
    best: float | None = None
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's train logs so far
    n: int = 0
    size: float = 0.0


def _fit(
    job: Fit,
    tp: TrainParams,
    out: Path,
    save_best: Callable[[nn.Module], None],
    fingerprint: dict | None,
    device: torch.device,
) -> Fit:
    key = _fingerprint(tp, fingerprint)
    main, world = ddp.is_main(), ddp.world_size()
    amp = autocast_dtype(tp.precision, device)
    enable_tf32(device)
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
    at = _Progress()
    epoch_rng = rng.get_state()  # the batch order's state when the current epoch began

    saved = checkpoint.read(out)
    if saved is not None and saved.meta["fingerprint"] != key:
        log.info("ignoring the checkpoint in %s: params or data changed", out)
        saved = None
    resume_rngs = None
    if saved is not None:
        state = saved.state()
        model.load_state_dict(load_file(str(saved.folder / checkpoint.WEIGHTS), device=str(device)))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        at = _Progress(**saved.meta["progress"])
        job.history = saved.meta["history"]
        epoch_rng = state["epoch_rng"]
        resume_rngs = state
        log.info(
            "resuming at epoch %d, step %d (%d into the epoch)", at.epoch + 1, at.step, at.position
        )

    def save(best_weights: dict | None = None) -> None:
        tensors, plain = checkpoint.global_rngs()
        state = {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng.get_state(),
            "epoch_rng": epoch_rng,
            **tensors,
        }
        meta = {
            "fingerprint": key,
            "progress": dataclasses.asdict(at),
            "history": job.history,
            **plain,
        }
        checkpoint.write(out, checkpoint.weights(model), state, meta, best_weights)

    better = (lambda a, b: a < b) if job.best_mode == "min" else (lambda a, b: a > b)
    try:
        for epoch in range(at.epoch, tp.epochs):
            model.train()
            t0 = time.perf_counter()
            if resume_rngs is None:
                epoch_rng = rng.get_state()
            else:  # the same batches as the interrupted run: replay its order, skip what it did
                rng.set_state(epoch_rng)
            groups = step_groups(
                job.train_batches(epoch, rng), job.grad_accum * (1 if job.sharded else world)
            )
            if resume_rngs is not None:
                for _ in itertools.islice(groups, at.position):
                    pass
                rng.set_state(resume_rngs["rng"])
                if main:  # other processes keep their own dropout seeds
                    checkpoint.set_global_rngs(resume_rngs, saved.meta)
                resume_rngs = None
            bar = tqdm(
                groups,
                total=steps_per_epoch,
                initial=at.position,
                desc=f"epoch {epoch + 1}/{tp.epochs}",
                unit="step",
                leave=False,
                disable=not main,
            )
            for group in bar:
                at.position += 1
                if len(group) < world and not job.sharded:  # a process would sit idle
                    continue
                opt.zero_grad(set_to_none=True)
                loss, logs, weight = accumulate(job, net, group, amp, scaler)
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                at.step += 1
                at.n += 1
                at.size += weight
                for k, v in logs.items():
                    at.sums[k] = at.sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{loss:.3f}")
                if main and tp.checkpoint_every and at.step % tp.checkpoint_every == 0:
                    save()
            model.eval()
            valid = None
            if main:
                with torch.inference_mode():
                    valid = job.evaluate(model)
            valid = ddp.from_main(valid)
            row = {
                "epoch": epoch + 1,
                "step": at.step,
                "lr": sched.get_last_lr()[0],
                **{f"train_{k}": v / max(1, at.n) for k, v in at.sums.items()},
                **({"train_size": at.size} if job.micro_weight else {}),
                **valid,
                "epoch_s": round(time.perf_counter() - t0, 2),
            }
            job.history.append(row)
            if main:
                log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
            improved = at.best is None or better(valid[job.best_key], at.best)
            if improved:
                at.best = valid[job.best_key]
            at = _Progress(epoch=epoch + 1, step=at.step, best=at.best)
            epoch_rng = rng.get_state()
            if main:
                save(checkpoint.weights(model) if improved else None)
    except KeyboardInterrupt:
        log.warning(
            "interrupted in epoch %d: the last checkpoint is in %s; run again to resume",
            at.epoch + 1,
            out,
        )
        raise SystemExit(130) from None
    if main:
        last = checkpoint.found(out)
        if last is not None and (last / checkpoint.BEST).exists():
            model.load_state_dict(load_file(str(last / checkpoint.BEST), device=str(device)))
        save_best(model)
        shutil.rmtree(out, ignore_errors=True)
    return job
