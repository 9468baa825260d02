"""Run-script machinery shared by pretraining and fine-tuning: preemption, resumable saves,
resume positions and the metric sinks (metrics.jsonl, log.txt, tensorboard, optional wandb)."""
import argparse
import contextlib
import copy
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from checkpointing import (CheckpointError, checkpoint_path, find_resume_checkpoint, link_checkpoint, load_checkpoint,
                           load_model_state, prune_checkpoints, rng_state, save_checkpoint, set_rng_state)
from distributed import (DistEnv, barrier, broadcast_object, cleanup_distributed, gather_objects, host_group,
                         is_main_process, setup_distributed, setup_logging)
from schedules import cosine_schedule, warmup_steps_from
from shutdown import RunError

logger = logging.getLogger("sigma")

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: preempted, a resumable checkpoint was written; requeue me


def str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`-h` with every option's default, also for options without a help text."""

    def _format_action(self, action):
        if not action.help and action.option_strings and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            # A --no_x flag whose dest defaults to True says nothing: "(default: True)" would read as
            # the opposite of what it does.
            if action.nargs != 0 or action.const == action.default:
                action.help = "(default: %(default)s)"
        elif action.nargs == 0 and action.const != action.default and action.help:
            action = copy.copy(action)  # "(default: True)" under --no_x would read as the opposite
            action.help = action.help.replace("%(default)s", "").strip() or None
        return super()._format_action(action)


def add_launcher_compat_flags(group) -> None:
    """Flags injected by `python -m torch.distributed.launch` or kept in old launch lines: accepted
    and ignored, since the process layout always comes from the launcher's environment."""
    for flag in ("--local-rank", "--local_rank", "--world_size", "--dist_url"):
        group.add_argument(flag, default=None, help=argparse.SUPPRESS)


def add_output_and_run_flags(p: argparse.ArgumentParser, *, output_dir: str, save_ckpt_freq: int,
                             run_name: str) -> None:
    """The "checkpoints and logging" and "run" flag groups every driver shares."""
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output_dir", default=output_dir)
    g.add_argument("--log_dir", default=None, help="tensorboard dir (default: output_dir/tb)")
    g.add_argument("--save_ckpt_freq", type=int, default=save_ckpt_freq, help="keep checkpoint-{epoch}.pth every N epochs")
    g.add_argument("--save_ckpt_steps", type=int, default=1000, help="rolling resumable save every N steps")
    g.add_argument("--keep_last_ckpts", type=int, default=0, help="epoch checkpoints to keep (0: all)")
    g.add_argument("--resume", default="", help="checkpoint to resume from (default: newest valid in output_dir)")
    g.add_argument("--auto_resume", dest="auto_resume", action="store_true", default=True)
    g.add_argument("--no_auto_resume", dest="auto_resume", action="store_false")
    g.add_argument("--log_every", type=int, default=20)
    g.add_argument("--run_name", default=run_name)
    g.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline unless WANDB_MODE)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0)
    add_launcher_compat_flags(g)


Rules = Dict[str, Tuple[Callable[[Any], bool], str]]  # flag -> (valid?, the valid range in words)


def check_flags(p: argparse.ArgumentParser, args: argparse.Namespace, rules: Rules) -> None:
    """parser.error naming every flag outside its valid range, before anything is built."""
    bad = [f"--{name} {getattr(args, name)}: must be {valid}" for name, (ok, valid) in rules.items()
           if getattr(args, name, None) is not None and not ok(getattr(args, name))]
    if bad:
        p.error("; ".join(bad))


def common_rules(args: argparse.Namespace) -> Rules:
    """Ranges of the flags the training drivers share (add_output_and_run_flags and the schedule)."""
    return {
        "epochs": (lambda v: v >= 1, ">= 1"),
        "lr": (lambda v: v > 0, "> 0"),
        "min_lr": (lambda v: v >= 0, ">= 0"),
        "warmup_epochs": (lambda v: args.warmup_steps > 0 or 0 <= v <= args.epochs,
                          f"in [0, --epochs {args.epochs}] (warmup cannot be longer than training)"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "clip_grad": (lambda v: v > 0, "> 0 (leave it out for no clipping)"),
        "num_workers": (lambda v: v >= 0, ">= 0"),
        "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "skip_nonfinite": (lambda v: v >= 0, ">= 0"),
        "save_ckpt_freq": (lambda v: v >= 1, ">= 1"),
        "save_ckpt_steps": (lambda v: v >= 0, ">= 0 (0: no rolling saves)"),
        "keep_last_ckpts": (lambda v: v >= 0, ">= 0 (0: keep all)"),
        "log_every": (lambda v: v >= 1, ">= 1"),
    }


def clip_rules(args: argparse.Namespace, tubelet_size: int = 2, patch_size: int = 16) -> Rules:
    """Ranges of the clip geometry flags (frames in tubes of `tubelet_size`, patches of `patch_size`)."""
    return {
        "num_frames": (lambda v: v >= tubelet_size and v % tubelet_size == 0,
                       f"a positive multiple of the tube length {tubelet_size}"),
        "sampling_rate": (lambda v: v >= 1, ">= 1"),
        "input_size": (lambda v: v >= patch_size and v % patch_size == 0,
                       f"a positive multiple of the patch size {patch_size}"),
    }


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


def start_run(device: str, output_dir: str, log_name: str = "train.log") -> DistEnv:
    """Process group, output_dir (temp files of saves a kill interrupted removed) and logging to
    output_dir/log_name; the launch itself is logged there too."""
    env = setup_distributed(device)
    os.makedirs(output_dir, exist_ok=True)
    if env.is_main:
        for name in os.listdir(output_dir):
            if name.startswith("checkpoint-") and ".tmp-" in name:
                os.remove(os.path.join(output_dir, name))
    setup_logging(env.rank, os.path.join(output_dir, log_name))
    logger.info("%s", env.description)
    return env


class Preemption:
    """Records SIGTERM / SIGUSR1 (Slurm's preemption and --signal warnings) instead of dying.

    While armed (the training loop runs), the first signal asks for a checkpoint at the next step
    the ranks agree on; a second one (DUPLICATE_WINDOW_S or more later) ends the process at once,
    or right after a save in progress (`saving`), with REQUEUE_EXIT_CODE since a resumable
    checkpoint then exists. Once disarmed
    (training is over: only evaluation is left, which a requeued run repeats) any signal exits
    with REQUEUE_EXIT_CODE at once.
    """

    # A job's processes often get one preemption twice within a moment (slurmstepd signals every
    # task and the batch shell forwards its own copy through srun): only a later signal is a second.
    DUPLICATE_WINDOW_S = 10.0

    def __init__(self):
        self.signals = []
        self._pending = None  # (work, flag) of the all-reduce started at the previous step
        self.armed = True
        self._first_at = None
        self._saving = self._exit_after_save = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)
        now = time.monotonic()
        if self.armed and self._first_at is None:
            self._first_at = now
            return
        if self.armed and now - self._first_at < self.DUPLICATE_WINDOW_S:
            return
        if self._saving:
            self._exit_after_save = True
            return
        name = signal.Signals(signum).name
        if not self.armed:
            logger.warning("%s after training: exiting with %d for requeue", name, REQUEUE_EXIT_CODE)
            raise SystemExit(REQUEUE_EXIT_CODE)
        logger.error("second preemption signal (%s) before a checkpoint could be saved: exiting now", name)
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def saving(self):
        """Signals that arrive inside wait for the save to finish."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._exit_after_save:
            logger.warning("second preemption signal during a save: the save finished, exiting with %d",
                           REQUEUE_EXIT_CODE)
            raise SystemExit(REQUEUE_EXIT_CODE)

    def disarm(self) -> None:
        """Training is over: from now on a signal exits at once (pending ones included)."""
        self.armed = False
        if self.signals:
            self._on_signal(self.signals.pop(), None)

    def agreed(self, step: int, env: DistEnv) -> bool:
        """Whether every rank stops after `step` (called by every rank after every step).

        Ranks may see the signal at different steps. With several processes each call starts a
        non-blocking all-reduce of this rank's flag over the host (gloo) group and reads the one
        started a step earlier, which has long finished: every step is checked, without a device
        sync or a wait, and all ranks stop after the same step, one step after the first saw it.
        """
        if env.world_size == 1:
            return bool(self.signals)
        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item())
        flag = torch.tensor([int(bool(self.signals))], dtype=torch.int32)
        work = torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=host_group(),
                                            async_op=True)
        self._pending = (work, flag)
        return stop


class Checkpointer:
    """When a driver saves: the rolling checkpoint-latest.pth every `every_steps` steps and as soon
    as the ranks agree on a preemption signal, checkpoint-{epoch}.pth every `every_epochs` epochs
    and after the last one (older ones pruned to `keep_last`).

    Args:
        save: save(path, step), called on every rank (saving is a collective).
        link_latest: `save` writes the whole training state to `path`, so that at an epoch end
            checkpoint-latest.pth can be a hard link of the epoch file instead of a second copy.
    """

    def __init__(self, env: DistEnv, output_dir: str, save: Callable[[str, int], None], *, every_steps: int,
                 every_epochs: int, epochs: int, keep_last: int = 0, link_latest: bool = True):
        self.env, self.output_dir, self.save, self.link_latest = env, output_dir, save, link_latest
        self.every_steps, self.every_epochs, self.epochs, self.keep_last = every_steps, every_epochs, epochs, keep_last
        self.preemption = Preemption()
        self.stopping = False

    def on_step_end(self, step: int) -> None:
        if self.preemption.agreed(step, self.env):
            self.stopping = True
        if self.stopping or (self.every_steps > 0 and step % self.every_steps == 0):
            self._save(checkpoint_path(self.output_dir), step)

    def on_epoch_end(self, epoch: int, step: int) -> None:
        latest = checkpoint_path(self.output_dir)
        if (epoch + 1) % self.every_epochs == 0 or epoch + 1 == self.epochs:
            path = checkpoint_path(self.output_dir, epoch)
            self._save(path, step)
            if self.env.is_main:
                prune_checkpoints(self.output_dir, self.keep_last)
            # The same state: checkpoint-latest.pth becomes a second name of the epoch file.
            linked = self.link_latest and self.env.is_main and link_checkpoint(path, latest)
            if self.link_latest and broadcast_object(linked):
                return
        self._save(latest, step)

    def _save(self, path: str, step: int) -> None:
        with self.preemption.saving():
            self.save(path, step)

    def exit_for_requeue(self, step: int) -> None:
        logger.warning("preemption signal: saved a resumable checkpoint at step %d; exiting with %d for requeue",
                       step, REQUEUE_EXIT_CODE)
        cleanup_distributed()
        sys.exit(REQUEUE_EXIT_CODE)


def gather_rng_states(env: DistEnv) -> list:
    """Every rank's RNG state, in rank order (a collective when distributed)."""
    if env.world_size == 1:
        return [rng_state()]
    states = [None] * env.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def check_finite(model: nn.Module, what: str) -> None:
    # One device-to-host sync for all parameters, not one per tensor.
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        raise FloatingPointError(f"parameters are not finite {what}; not saving, the last checkpoint is intact")


def save_training_state(path: str, env: DistEnv, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler], step: int, steps_per_epoch: int,
                        config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> None:
    """A resumable checkpoint (called on every rank: RNG states are gathered; rank 0 writes).

    Args:
        model: the unwrapped model (plain state-dict names, no "module." / "_orig_mod.").
        extra: further plain entries, e.g. {"model_ema": ...}.
    """
    check_finite(model, f"at step {step}")
    rngs = gather_rng_states(env)
    if env.is_main:
        save_checkpoint(path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "epoch": step // steps_per_epoch, "step": step,
            "steps_per_epoch": steps_per_epoch, "rng": rngs, "config": json.loads(json.dumps(config)),
            **(extra or {})})
    barrier()


def load_training_state(resume: str, auto_resume: bool, output_dir: str, *, model: nn.Module,
                        optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler]) -> Optional[Tuple[str, Dict[str, Any]]]:
    """Restore model, optimizer and scaler from `resume`, else (with `auto_resume`) from the newest
    valid checkpoint in `output_dir`. Returns (path, state), or None for a fresh run.

    With several processes rank 0 chooses the file and every rank loads that one (a rank with a
    stale view of a shared filesystem must not pick another); a rank that cannot read it, or reads
    another step, stops every rank (CheckpointError, SystemExit) with the reason.
    """
    found = find_resume_checkpoint(output_dir) if not resume and auto_resume and is_main_process() else None
    path = broadcast_object(resume or (found[0] if found else None))
    if path is None:
        return None
    state, error = (found[1], None) if found and found[0] == path else _try_load(path)
    reasons = gather_objects(error.reason if error else None)
    if error is not None:
        raise error  # this rank's own reason; the others raise theirs or name this one
    if any(reasons):
        raise CheckpointError(path, "; ".join(f"rank {r}: {why}" for r, why in enumerate(reasons) if why))
    steps = gather_objects(state["step"])
    if len(set(steps)) > 1:
        raise SystemExit(f"{path} holds steps {steps} on ranks 0..{len(steps) - 1}: the ranks see different "
                         f"versions of the file (a stale shared-filesystem cache?)")
    if "optimizer" not in state:
        raise SystemExit(f"{path} holds weights only (no optimizer state): start from it with --finetune, "
                         f"not --resume")
    load_model_state(model, state, path)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return path, state


def _try_load(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[CheckpointError]]:
    """(state, None) or (None, why it cannot be loaded)."""
    try:
        return load_checkpoint(path), None
    except CheckpointError as e:
        return None, e


def resume_position(state: Dict[str, Any], path: str, steps_per_epoch: int) -> Tuple[int, int, int]:
    """(start epoch, global step, steps already done in that epoch) of a loaded checkpoint."""
    step = state["step"]
    start_epoch, start_in_epoch = divmod(step, steps_per_epoch)
    saved = state.get("steps_per_epoch", steps_per_epoch)
    if saved != steps_per_epoch:
        # Another batch size or world size: positions inside an epoch no longer line up.
        start_epoch, start_in_epoch = -(-step // saved), 0
        step = start_epoch * steps_per_epoch
        logger.warning("%s was written with %d steps per epoch, this run has %d: restarting at the beginning "
                       "of epoch %d (global step %d)", path, saved, steps_per_epoch, start_epoch, step)
    return start_epoch, step, start_in_epoch


def resume_from(state: Dict[str, Any], path: str, steps_per_epoch: int, env: DistEnv) -> Tuple[int, int, int]:
    """Restore this rank's RNG state from a loaded checkpoint; return its `resume_position`."""
    position = resume_position(state, path, steps_per_epoch)
    rngs = state.get("rng") or []
    if rngs:
        set_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
    logger.info("resumed from %s at epoch %d, step %d", path, position[0], position[1])
    return position


def write_config(output_dir: str, env: DistEnv, config: Dict[str, Any]) -> None:
    """The resolved run configuration as output_dir/config.json (rank 0)."""
    if env.is_main:
        with open(os.path.join(output_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def _drop_records(path: str, drop: Callable[[Dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines file without the records `drop` selects (and without a torn last line
    of a killed run), atomically."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if drop(record):
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if not dropped:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    logger.info("%s: dropped %d records of steps this resumed run repeats", os.path.basename(path), dropped)


def format_duration(seconds: float) -> str:
    """'2d 03:04:05' (days only when there are any): multi-day runs must not wrap at 24 h."""
    days, rest = divmod(int(seconds), 86400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days}d {clock}" if days else clock


class RunLog:
    """Rank 0's metric sinks: metrics.jsonl (every log step), log.txt (one JSON line per epoch),
    tensorboard, and Weights & Biases behind a flag. Other ranks get a RunLog that does nothing."""

    def __init__(self, env: DistEnv, output_dir: str, log_dir: Optional[str], total_steps: int,
                 config: Dict[str, Any], use_wandb: bool = False, run_name: str = "sigma",
                 resume_at: Optional[Tuple[int, int]] = None):
        """resume_at: (epoch, global step) this run resumes from: records of later steps and of
        that epoch and later ones, which the run is about to write again, are dropped first."""
        self.enabled, self.output_dir, self.total_steps = env.is_main, output_dir, total_steps
        self.metrics_file = self.writer = self.wandb = None
        if not self.enabled:
            return
        if resume_at is not None:
            epoch, step = resume_at
            _drop_records(os.path.join(output_dir, "metrics.jsonl"), lambda r: r.get("step", 0) > step)
            _drop_records(os.path.join(output_dir, "log.txt"), lambda r: r.get("epoch", -1) >= epoch)
        self.metrics_file = open(os.path.join(output_dir, "metrics.jsonl"), "a")
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is heavy to import

        self.writer = SummaryWriter(log_dir or os.path.join(output_dir, "tb"))
        if use_wandb:
            try:
                import wandb  # lazy and optional: not in requirements.txt
            except ImportError:
                raise SystemExit("--wandb needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project="sigma", name=run_name, dir=output_dir, config=config,
                                    mode=os.environ.get("WANDB_MODE", "offline"), resume="allow", id=run_name)

    def step(self, record: Dict[str, float]) -> None:
        """A training-step record (keys step, epoch, loss, lr, data_time, step_time, ...)."""
        if not self.enabled:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.wandb:
            self.wandb.log(record, step=record["step"])
        for k, v in record.items():
            self.writer.add_scalar(f"train/{k}", v, record["step"])
        eta = (self.total_steps - record["step"]) * record["step_time"]
        logger.info("epoch %d step %d/%d loss %.4f lr %.2e (peak group) data %.3fs step %.3fs eta %s", record["epoch"],
                    record["step"], self.total_steps, record["loss"], record["lr"], record["data_time"],
                    record["step_time"], format_duration(eta))

    def epoch(self, record: Dict[str, float]) -> None:
        """An end-of-epoch record, appended to log.txt."""
        if not self.enabled:
            return
        with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"epoch/{k}", v, record["epoch"])
        if self.wandb:
            self.wandb.log({f"epoch/{k}": v for k, v in record.items()})

    @property
    def tb_dir(self) -> Optional[str]:
        return self.writer.log_dir if self.writer else None

    def close(self) -> None:
        if self.metrics_file:
            self.metrics_file.close()
            self.writer.close()
        if self.wandb:
            self.wandb.finish()
