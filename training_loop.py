"""The optimiser steps of one epoch, shared by the pretraining and fine-tuning engines.

An engine supplies `loss_fn(batch) -> (loss, stats)` for a batch already on the device;
`train_steps` owns what is the same for every objective: the lr / weight-decay schedules applied
per step, gradient accumulation (DDP all-reduces only on the micro-batch that completes a step),
precision, fp16 loss scaling, clipping, non-finite losses and metric windows. It is a generator:
it yields a `StepDone` after every optimiser step, so the driver's loop body shows what happens
between steps (EMA, logging, checkpoints, stopping). `TorchUpdate` (plain or DDP model, torch
optimizer) and `DeepSpeedUpdate` (a DeepSpeed engine) are the two ways a step is taken.
"""
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from distributed import all_reduce_mean, gather_objects, is_distributed, ranks_with
from shutdown import RunError

logger = logging.getLogger("sigma")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

LossFn = Callable[[Dict[str, object]], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


@dataclass
class StepDone:
    """What `train_steps` yields after each optimiser step."""
    step: int  # global optimiser steps done
    stats: Dict[str, torch.Tensor]  # this step's detached device scalars (loss terms, grad_norm, lr)
    log: Optional[Dict[str, float]]  # the metrics record when this is a log step (host floats), else None


class EpochTotals:
    """Running sums of one epoch's step stats. A checkpoint taken mid-epoch stores them (`state`),
    so that a resumed epoch's averages still cover every step of the epoch."""

    def __init__(self, state: Optional[Dict[str, object]] = None):
        state = state or {}
        self.sums: Dict[str, torch.Tensor] = {k: torch.tensor(float(v)) for k, v in state.get("sums", {}).items()}
        self.count: int = int(state.get("count", 0))

    def reset(self) -> None:
        """A new epoch."""
        self.sums, self.count = {}, 0

    def add(self, stats: Dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k].to(v.device) + v if k in self.sums else v
        self.count += 1

    def state(self) -> Dict[str, object]:
        """Plain floats (one host sync, only when a checkpoint is written)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

    def averages(self) -> Dict[str, float]:
        return {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}

    def global_averages(self, device: torch.device) -> Dict[str, float]:
        """The epoch's averages over every rank (all took the same steps) and "steps"."""
        means = global_means(self.sums, device) if self.sums else {}
        return {k: v / max(self.count, 1) for k, v in means.items()} | {"steps": self.count}


def set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Every group's lr = lr * its lr_scale; decaying groups get `weight_decay`, groups with a fixed
    "wd_value" (the attentive-probe grid's heads) keep it."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if "wd_value" in group:
            group["weight_decay"] = group["wd_value"]
            continue
        # Remember which groups decay: a schedule that reaches 0 must not turn them off for good.
        if group.setdefault("decay", group["weight_decay"] > 0):
            group["weight_decay"] = weight_decay


class TorchUpdate:
    """Steps of a plain or DDP-wrapped model with a torch optimizer.

    Args:
        precision: "fp32", "bf16" or "fp16": autocast dtype of the forward pass.
        scaler: GradScaler, required for fp16.
        clip_grad: max global grad norm (None: no clipping; the norm is still reported).
        accum_iter: micro-batches per optimizer step (the loss is divided by it).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: str = "fp32",
                 scaler: Optional[torch.amp.GradScaler] = None, clip_grad: Optional[float] = None,
                 accum_iter: int = 1):
        if precision == "fp16" and scaler is None:
            raise ValueError("fp16 needs a GradScaler")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.dtype, self.clip_grad, self.accum_iter = PRECISIONS[precision], clip_grad, accum_iter
        self.input_dtype = None  # autocast casts inside the model

    def context(self, device: torch.device, last_micro: bool):
        """Forward and backward of one micro-batch run inside this: autocast, and DDP's no_sync()
        on all but the last micro-batch of a step (no_sync must cover the forward pass too)."""
        stack = contextlib.ExitStack()
        if hasattr(self.model, "no_sync") and not last_micro:
            stack.enter_context(self.model.no_sync())
        stack.enter_context(torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None))
        return stack

    def backward(self, loss: torch.Tensor, last_micro: bool) -> Optional[torch.Tensor]:
        """Backward of one micro-batch; on the last one also the step. Returns the grad norm
        (a device tensor, no host sync) after a step, else None."""
        loss = loss / self.accum_iter
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if not last_micro:
            return None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.scaler is None and any("head" in g for g in self.optimizer.param_groups):
            grad_norm = clip_per_head(self.optimizer.param_groups, self.clip_grad)  # the attentive-probe grid
        else:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad if self.clip_grad else float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.zero_grad()
        return grad_norm.detach()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler else 1.0


def clip_per_head(groups, max_norm: Optional[float]) -> torch.Tensor:
    """Clip the gradients of each attentive-probe head (the groups sharing a "head" index) on their
    own, and retire a head whose gradient norm is not finite: its groups are flagged "dead" (logged
    once), any non-finite weight of it zeroed, and its gradients dropped now and at every later step,
    so the optimizer leaves its weights as they are; the other heads train on untouched. One host
    read of the [H] norms per step.

    Returns:
        The norm of all live heads' gradients together (before clipping).
    Raises:
        FloatingPointError: every head is dead.
    """
    heads: Dict[int, list] = {}
    for g in groups:
        heads.setdefault(g["head"], []).append(g)
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad.detach().float()) for g in gs for p in g["params"] if p.grad is not None]
        or [torch.zeros(())])) for gs in heads.values()])  # [H]
    finite = torch.isfinite(norms).tolist()
    for (h, gs), ok in zip(heads.items(), finite):
        dead = bool(gs[0].get("dead")) or not ok
        if dead and not gs[0].get("dead"):
            logger.warning("attentive-probe head %d diverged (gradient norm not finite): retired, its weights kept "
                           "as they were, the other heads train on", h)
            with torch.no_grad():  # a step before may have overflowed them: checkpoints need finite weights
                for p in (p for g in gs for p in g["params"]):
                    p.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        for g in gs:
            g["dead"] = dead
            if dead:
                for p in g["params"]:
                    p.grad = None
    live = torch.tensor([not g[0]["dead"] for g in heads.values()], device=norms.device)
    if not live.any():
        raise FloatingPointError(f"every one of the {len(heads)} attentive-probe heads diverged")
    live_norms = torch.where(live, norms, torch.zeros_like(norms))
    if max_norm:
        coef = (max_norm / (live_norms + 1e-6)).clamp(max=1.0)  # [H], as clip_grad_norm_ per head
        for (h, gs), c in zip(heads.items(), coef):
            for p in (p for g in gs for p in g["params"] if p.grad is not None):
                p.grad.mul_(c.to(p.grad.dtype))
    return torch.linalg.vector_norm(live_norms)


class DeepSpeedUpdate:
    """Steps of a DeepSpeed engine. DeepSpeed owns accumulation (its gradient_accumulation_steps
    must equal the loop's accum_iter), clipping, loss scaling and the ZeRO partitioning; its
    optimizer keeps our param groups, so the schedules set lr and weight decay as usual."""

    def __init__(self, engine):
        self.engine, self.optimizer = engine, engine.optimizer
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_deepspeed_precision(engine))

    def context(self, device: torch.device, last_micro: bool):
        return contextlib.nullcontext()  # the module itself is in bf16/fp16; DeepSpeed reduces at boundaries

    def backward(self, loss: torch.Tensor, last_micro: bool) -> Optional[torch.Tensor]:
        if self.engine.is_gradient_accumulation_boundary() != last_micro:
            raise RuntimeError("DeepSpeed's accumulation boundary and the loop's disagree: "
                               "gradient_accumulation_steps must equal --accum_iter (--update_freq)")
        self.engine.backward(loss)
        self.engine.step()  # called on every micro-batch; DeepSpeed steps at the boundary
        if not last_micro:
            return None
        norm = self.engine.get_global_grad_norm()  # None where DeepSpeed does not compute one (fp32, ZeRO 0)
        return torch.empty(0) if norm is None else torch.as_tensor(norm, dtype=torch.float32).detach()

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def loss_scale(self) -> float:
        return float(getattr(self.optimizer, "cur_scale", 1.0))


def _deepspeed_precision(engine) -> str:
    if engine.bfloat16_enabled():
        return "bf16"
    return "fp16" if engine.fp16_enabled() else "fp32"


def to_device(batch: Dict[str, object], device: torch.device, video_dtype: Optional[torch.dtype] = None) -> Dict[str, object]:
    """Tensors of `batch` on `device` (non-blocking: pinned host memory overlaps the copy)."""
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if video_dtype is not None:
        out["video"] = out["video"].to(video_dtype)
    return out


def train_steps(model: nn.Module, loader: Iterable, update, schedule, loss_fn: LossFn, *, device: torch.device,
                epoch: int, start_step: int, accum_iter: int = 1, log_every: int = 20, skip_nonfinite: int = 0,
                tracker=None, nonfinite: Optional["NonFiniteWatch"] = None) -> Iterator[StepDone]:
    """One pass over `loader`, yielding after every optimiser step.

    Micro-batches that cannot complete a step at the end of the loader are not run; a step cut
    short (a skipped loss, the caller stopping) does not carry its gradients over.

    Args:
        model: what `loss_fn` calls; put in train mode here.
        update: TorchUpdate or DeepSpeedUpdate.
        schedule: `schedules.Schedule` (lr_at, wd_at of the global step).
        start_step: global optimizer step at the start.
        log_every: a metrics record every this many steps, and at the first and last step.
        skip_nonfinite: non-finite steps the run may skip (on every rank) before stopping; used
            when `nonfinite` is not given (the drivers pass the run's watch, whose budget counts
            every epoch and survives a resume).
        tracker: BadSampleTracker fed with every batch.
        nonfinite: the run's NonFiniteWatch (its Checkpointer's); every step's loss and grad norm
            go through it, and it is read at every log step.
    """
    model.train()
    watch = nonfinite if nonfinite is not None else NonFiniteWatch(skip_nonfinite)
    step = start_step
    usable = len(loader) // accum_iter * accum_iter if hasattr(loader, "__len__") else None
    window = MetricsWindow(update, schedule, device)
    # A loss scaler (fp16) meets inf gradients on purpose and skips those steps itself.
    grads_checked = getattr(update, "scaler", None) is None and update.input_dtype != torch.float16
    t_last = time.perf_counter()
    try:
        for micro, batch in enumerate(loader):
            if micro == usable:
                break
            if tracker is not None:
                tracker.update(batch)
            window.data_time += time.perf_counter() - t_last
            if micro % accum_iter == 0:
                set_schedules(update.optimizer, schedule.lr_at(step), schedule.wd_at(step))
                loss_bad = None  # any micro-batch of this step with a non-finite loss (a device bool)
            window.clips += batch["video"].shape[0]
            batch = to_device(batch, device, update.input_dtype)
            last_micro = (micro + 1) % accum_iter == 0
            with update.context(device, last_micro):
                loss, stats = loss_fn(batch)
                if watch.allowed > 0 and watch.skip(step, epoch, loss, stats):
                    update.zero_grad()
                    continue
                bad = ~torch.isfinite(loss.detach())
                loss_bad = bad if loss_bad is None else loss_bad | bad
                grad_norm = update.backward(loss, last_micro)
            if grad_norm is None:
                continue
            grad_bad = ~torch.isfinite(grad_norm).all() if grads_checked and grad_norm.numel() else None
            watch.note(step, epoch, loss_bad, grad_bad, stats)
            step += 1
            if grad_norm.numel():  # empty: the engine did not report a norm
                stats["grad_norm"] = grad_norm
            # The peak group's lr (with layer decay the head's; the first group is the patch embedding's).
            stats["lr"] = torch.tensor(max(g["lr"] for g in update.optimizer.param_groups))
            window.steps += 1
            # Every log_every steps, and also the first step of an epoch (progress and ETA at once)
            # and its last one (every epoch ends in metrics.jsonl, however short).
            log_now = step % log_every == 0 or step == start_step + 1 or micro + 1 == usable
            if log_now:
                watch.check()  # the record below reads the device anyway: no extra sync
            yield StepDone(step, stats, window.record(step, epoch, stats) if log_now else None)
            t_last = time.perf_counter()
    finally:
        update.zero_grad()


class NonFiniteError(RunError, FloatingPointError):
    """A non-finite loss, gradient norm or parameter stopped the run (its message is complete)."""


class NonFiniteWatch:
    """Non-finite losses and gradient norms of every step, without a host sync per step.

    `note` keeps, on the device, which of the steps since the last `check` first had a non-finite
    loss (bit 1) or gradient norm (bit 2) on this rank, and its loss terms. `check` reads that
    (one host read, where the caller reads the device anyway: a log step, before a save or an
    evaluation) and, when any rank met one, stops every rank naming the first such step, the ranks
    it occurred on, their loss terms and the last good checkpoint. Every rank calls `check` at the
    same steps (it is a collective). Under DDP a rank's NaN reaches the others' gradients in the
    all-reduce: the ranks whose own loss was non-finite are the cause, the others are named apart.

    With `allowed` > 0 (--skip_nonfinite) the loss is instead read at every micro-batch (`skip`, a
    host sync: the skip must be decided before the backward), and up to `allowed` such steps of
    the whole run are skipped on every rank; `skipped` is saved in checkpoints and resumed.
    """

    def __init__(self, allowed: int = 0, skipped: int = 0):
        self.allowed, self.skipped = allowed, skipped
        self.last_good = "none (nothing saved yet)"  # the Checkpointer's description of its last good file
        self._reset()

    def _reset(self) -> None:
        self.steps: List[Tuple[int, int]] = []  # (step, epoch) of each noted step since the last check
        self.first = self.kind = self.terms = None  # device scalars / [T] loss terms of the first bad step
        self.names: List[str] = []

    def note(self, step: int, epoch: int, loss_bad: torch.Tensor, grad_bad: Optional[torch.Tensor],
             stats: Dict[str, torch.Tensor]) -> None:
        """Record one optimizer step (device ops only). step: optimizer steps done before it."""
        kind = loss_bad.long() + (2 * grad_bad.long() if grad_bad is not None else 0)
        if self.first is None:
            self.names = sorted(k for k, v in stats.items() if k.startswith("loss") and v.numel() == 1)
            self.first = torch.full((), -1, dtype=torch.long, device=kind.device)
            self.kind = torch.zeros((), dtype=torch.long, device=kind.device)
            self.terms = torch.zeros(len(self.names), device=kind.device)
        new = (self.first < 0) & (kind > 0)
        self.first = torch.where(new, len(self.steps), self.first)
        self.kind = torch.where(new, kind, self.kind)
        if self.names and all(k in stats for k in self.names):
            terms = torch.stack([stats[k].detach().float().reshape(()) for k in self.names])  # [T]
            self.terms = torch.where(new, terms, self.terms)
        self.steps.append((step, epoch))

    def check(self) -> None:
        """Stop every rank if any met a non-finite step since the last check (a collective).

        Raises:
            NonFiniteError: naming the first such step, its ranks and the last good checkpoint.
        """
        if not self.steps:
            return
        first = int(self.first)  # the one host read
        mine = None
        if first >= 0:
            (step, epoch), kind = self.steps[first], int(self.kind)
            mine = (step, epoch, kind, {k: round(v, 4) for k, v in zip(self.names, self.terms.tolist())})
        self._reset()
        if not ranks_with(mine is not None):
            return
        raise NonFiniteError(self._message(gather_objects(mine)))

    def _message(self, found: List[Optional[tuple]]) -> str:
        step, epoch = min((f[0], f[1]) for f in found if f)
        at = [r for r, f in enumerate(found) if f and f[0] == step]
        loss_ranks = [r for r in at if found[r][2] & 1]
        ranks = loss_ranks or at
        what = "loss" if loss_ranks else "gradient norm (finite loss)"
        others = [r for r, f in enumerate(found) if f and r not in ranks]
        also = f"; other ranks' gradients or losses became non-finite after it: {others}" if others else ""
        return (f"non-finite {what} at step {step} (epoch {epoch}) on rank(s) {ranks}{also}; loss terms of rank "
                f"{ranks[0]}: {found[ranks[0]][3]}; stopping without saving; the last good checkpoint is "
                f"{self.last_good}")

    def skip(self, step: int, epoch: int, loss: torch.Tensor, stats: Dict[str, torch.Tensor]) -> bool:
        """--skip_nonfinite: whether every rank skips this micro-batch's step (a host read and a
        collective per micro-batch); raises once the run's budget is spent."""
        bad_ranks = ranks_with(not math.isfinite(loss.item()))
        if not bad_ranks:
            return False
        self.skipped += 1
        if self.skipped > self.allowed:
            terms = {k: round(float(v), 4) for k, v in stats.items() if k.startswith("loss")}
            raise NonFiniteError(
                f"non-finite loss at step {step} (epoch {epoch}) on rank(s) {bad_ranks}, {self.skipped} non-finite "
                f"step(s) in this run with --skip_nonfinite {self.allowed}; this rank's loss terms {terms}; stopping "
                f"without saving; the last good checkpoint is {self.last_good}")
        logger.warning("non-finite loss at step %d (epoch %d) on rank(s) %s: skipping the step on every rank (%d of "
                       "--skip_nonfinite %d in this run)", step, epoch, bad_ranks, self.skipped, self.allowed)
        return True


class MetricsWindow:
    """Data wait, clips and steps since the last metrics record (or the epoch's start)."""

    def __init__(self, update, schedule, device: torch.device):
        self.update, self.schedule, self.device = update, schedule, device
        self.data_time, self.clips, self.steps, self.start = 0.0, 0, 0, time.perf_counter()

    def record(self, step: int, epoch: int, stats: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """A metrics record: loss terms averaged over all ranks, throughput summed (one all-reduce,
        one host read); then a new window starts."""
        elapsed = time.perf_counter() - self.start
        means = global_means({**stats, "clips": torch.tensor(float(self.clips))}, self.device)
        record = {"step": step, "epoch": epoch, **{k: v for k, v in means.items() if k != "clips"},
                  "weight_decay": self.schedule.wd_at(step - 1), "loss_scale": self.update.loss_scale(),
                  "data_time": self.data_time / self.steps, "step_time": elapsed / self.steps,
                  "clips_per_s": means["clips"] * world_size() / elapsed}
        self.data_time, self.clips, self.steps, self.start = 0.0, 0, 0, time.perf_counter()
        return record


def global_means(values: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, float]:
    """Each scalar tensor's mean over all ranks, as host floats (one all-reduce, one host read)."""
    stacked = torch.stack([v.detach().float().to(device).reshape(()) for v in values.values()])  # [S]
    return dict(zip(values, all_reduce_mean(stacked).tolist()))


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1
