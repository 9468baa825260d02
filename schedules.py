"""Schedules as pure functions of the global optimizer step (never an array to index past its end)."""
import math


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
