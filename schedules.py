"""The training schedule: lr and weight decay as pure functions of the global optimizer step (never
an array to index past its end), and the official recipe's run length and lr scaling."""
import math
from dataclasses import dataclass
from typing import Optional

from shutdown import RunError


def cosine_schedule(step: int, base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> float:
    """Linear warmup, then half a cosine; the official VideoMAE/SIGMA `cosine_scheduler` as a function.

    Steps 0 .. warmup_steps - 1 rise linearly from `warmup_start` to `base`, both ends included
    (np.linspace), so step warmup_steps - 1 is already `base`. From step warmup_steps the value is
    final + (base - final) * (1 + cos(pi * i / C)) / 2 with i = step - warmup_steps and
    C = total_steps - warmup_steps: `base` at step warmup_steps, and the last real step
    total_steps - 1 is one cosine step short of `final`, exactly as in the official array. The
    formula reaches `final` at step total_steps; every step from there on returns `final`.

    Args:
        step: global optimizer step, >= 0.
        base: value at the end of the warmup (peak lr, initial weight decay).
        final: value the cosine decays to.
        total_steps: length of the schedule (epochs * steps per epoch), > 0.
        warmup_steps: length of the linear warmup, in [0, total_steps].
        warmup_start: value at step 0 when warmup_steps > 0.
    """
    if step < 0 or total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need step >= 0, total_steps > 0 and 0 <= warmup_steps <= total_steps; got step {step}, "
                         f"total_steps {total_steps}, warmup_steps {warmup_steps}")
    if step >= total_steps:
        return final
    if step < warmup_steps:
        if warmup_steps == 1:  # np.linspace(start, base, 1) == [start]
            return warmup_start
        return warmup_start + (base - warmup_start) * step / (warmup_steps - 1)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def warmup_steps_from(warmup_epochs: int, warmup_steps: int, steps_per_epoch: int) -> int:
    """Warmup length in steps: `warmup_steps` when positive (as in the official code), else epochs."""
    return warmup_steps if warmup_steps > 0 else warmup_epochs * steps_per_epoch


@dataclass(frozen=True)
class Schedule:
    """Steps of the run, and lr and weight decay as functions of the global optimizer step (lrs
    already scaled by global_batch / 256)."""
    steps_per_epoch: int
    global_batch: int
    lr: float
    min_lr: float
    warmup_lr: float
    warmup_steps: int
    total_steps: int
    weight_decay: float
    weight_decay_end: float

    def lr_at(self, step: int) -> float:
        return cosine_schedule(step, self.lr, self.min_lr, self.total_steps, self.warmup_steps, self.warmup_lr)

    def wd_at(self, step: int) -> float:
        return cosine_schedule(step, self.weight_decay, self.weight_decay_end, self.total_steps)


def lr_rule(*, lr: float, batch_size: int, accum: int, world_size: int) -> str:
    """The actual peak lr and the rule that made it, for the run's first lines, e.g.
    'lr 1.56e-05 = base lr 0.001 x batch 4 x accum 1 x 1 process / 256 (--lr is the base lr)'."""
    actual = lr * batch_size * accum * world_size / 256
    processes = f"{world_size} process{'' if world_size == 1 else 'es'}"
    return (f"lr {actual:.3g} = base lr {lr:g} x batch {batch_size} x accum {accum} x {processes} / 256 "
            f"(--lr is the base lr)")


class ScheduleError(RunError, ValueError):
    """Flags whose schedule cannot be run (no full step, warmup longer than training)."""


def make_schedule(*, micro_batches: int, accum: int, batch_size: int, world_size: int, num_videos: int,
                  lr: float, min_lr: float, warmup_lr: float, epochs: int, warmup_epochs: int, warmup_steps: int,
                  weight_decay: float, weight_decay_end: Optional[float]) -> Schedule:
    """The official recipe's schedule: lrs scaled by the global batch / 256, linear warmup, cosine.

    Args:
        micro_batches: batches per epoch of this rank's loader; accum of them make one step.
        batch_size: per rank and micro-batch, as the lr scaling counts it.
        num_videos: for the error message when no full step fits.
    """
    steps_per_epoch = micro_batches // accum
    if steps_per_epoch == 0:
        raise ScheduleError(f"{num_videos} videos give no full step of batch {batch_size} x accum {accum} x "
                         f"{world_size} processes")
    total = epochs * steps_per_epoch
    warmup = warmup_steps_from(warmup_epochs, warmup_steps, steps_per_epoch)
    if warmup > total:
        raise ScheduleError(f"--warmup_epochs {warmup_epochs} / --warmup_steps {warmup_steps} give {warmup} "
                         f"warmup steps, more than the {total} steps of --epochs {epochs}")
    global_batch = batch_size * accum * world_size
    scale = global_batch / 256
    return Schedule(steps_per_epoch, global_batch, lr * scale, min_lr * scale, warmup_lr * scale, warmup, total,
                    weight_decay, weight_decay if weight_decay_end is None else weight_decay_end)
