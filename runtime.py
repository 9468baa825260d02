"""What a training driver needs around its epoch loop: the run's start (process group, output
folder, logging), the training model (DDP, torch.compile, precision, loss scaling, DeepSpeed) and
its loader, preemption signals, and the `Checkpointer` that writes and reads every checkpoint."""
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

import deepspeed_support
from checkpointing import (changed_flags, check_finite, checkpoint_path, gather_rng_states, link_checkpoint,
                           load_training_state, prune_checkpoints, resume_log_offset, save_checkpoint,
                           save_training_state)
from datasets.sampler import ResumableSampler
from datasets.video_dataset import collate_clips
from distributed import DistEnv, broadcast_object, cleanup_distributed, host_group, setup_distributed, setup_logging, wrap_ddp
from shutdown import WORKER_INIT, RunError, at_exit
from training_loop import DeepSpeedUpdate, NonFiniteWatch, TorchUpdate

logger = logging.getLogger("sigma")

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: preempted, a resumable checkpoint was written; requeue me


def start_run(device: str, output_dir: str, log_name: str = "train.log", lock: bool = False) -> DistEnv:
    """Process group, output_dir (temp files of saves a kill interrupted removed) and logging to
    output_dir/log_name; the launch itself is logged there too.

    lock: take output_dir's RunLock (training drivers): a second run into the folder stops here,
    before it touches anything, with one line naming the holder (on every rank).
    """
    env = setup_distributed(device)
    os.makedirs(output_dir, exist_ok=True)
    if lock:
        refusal = None
        if env.is_main:
            try:
                RunLock(output_dir).acquire()
            except RunLockError as e:
                refusal = str(e)
        refusal = broadcast_object(refusal)  # the other ranks share rank 0's lock, or its refusal
        if refusal:
            raise RunLockError(refusal)
    if env.is_main:
        for name in os.listdir(output_dir):
            if name.startswith("checkpoint-") and ".tmp-" in name:
                os.remove(os.path.join(output_dir, name))
    setup_logging(env.rank, os.path.join(output_dir, log_name))
    logger.info("%s", env.description)
    for message in _LOCK_WARNINGS:
        logger.warning("%s", message)
    _LOCK_WARNINGS.clear()
    return env


def end_run() -> None:
    """The normal end of a training driver's main: the run lock released, the process group torn down."""
    RunLock.release_held()
    cleanup_distributed()


class RunLockError(RunError):
    """Another run holds the output folder."""


_LOCK_WARNINGS = []  # said once logging is set up


class RunLock:
    """One run per output folder: output_dir/run.lock holds the owner's host, pid and Slurm job.

    Taken by rank 0 (its ranks share it) with an exclusive create. A lock of a process that is gone
    (same host, dead pid) or of the same Slurm job (a requeue, possibly on another node) is taken
    over with a warning; a lock of another host is considered stale once its heartbeat (the file's
    mtime, touched every HEARTBEAT_S by the owner) is older than STALE_S. Anything else refuses.
    """

    NAME, HEARTBEAT_S, STALE_S = "run.lock", 60.0, 600.0
    _held: Optional["RunLock"] = None

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, self.NAME)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID", ""),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._stop = threading.Event()

    def acquire(self) -> None:
        """Raises RunLockError naming the holder when another live run holds the folder."""
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                why = self._stale(holder)
                if why is None:
                    raise RunLockError(
                        f"{os.path.dirname(self.path)} is in use by another run: pid {holder.get('pid')} on host "
                        f"{holder.get('host')}{' (Slurm job ' + holder['job'] + ')' if holder.get('job') else ''}, "
                        f"started {holder.get('started', '?')} ({self.path}); wait for it, stop it, or give "
                        f"another --output_dir") from None
                if why != "this process":
                    _LOCK_WARNINGS.append(f"taking over the stale run lock {self.path} of pid {holder.get('pid')} "
                                          f"on host {holder.get('host')}: {why}")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            break
        RunLock._held = self
        at_exit(RunLock.release_held)
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _read(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}  # torn (a kill between create and write) or just removed: stale

    def _stale(self, holder: Dict[str, Any]) -> Optional[str]:
        """Why `holder` no longer holds the folder, or None if it may still run."""
        if not holder:
            return "the lock file is empty or unreadable"
        if holder.get("host") == self.me["host"] and holder.get("pid") == self.me["pid"]:
            return "this process"  # an earlier run of this process (in-process callers) ended without releasing
        if holder.get("job") and holder.get("job") == self.me["job"]:
            return f"the same Slurm job {holder['job']} (requeued)"
        if holder.get("host") == self.me["host"]:
            try:
                os.kill(int(holder.get("pid", 0)), 0)
            except ProcessLookupError:
                return "that process is gone"
            except (PermissionError, ValueError, OverflowError):
                pass
            return None
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return "the lock was just released"
        return f"no heartbeat for {age:.0f} s" if age > self.STALE_S else None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    @classmethod
    def release_held(cls) -> None:
        """Remove the lock this process holds (only if it is still ours)."""
        lock, cls._held = cls._held, None
        if lock is None:
            return
        lock._stop.set()
        holder = lock._read()
        if holder.get("pid") == lock.me["pid"] and holder.get("host") == lock.me["host"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock.path)


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
    """The one writer and reader of a training run's checkpoints, for torch and DeepSpeed runs.

    Writes the rolling checkpoint-latest.pth every `every_steps` steps and as soon as the ranks
    agree on a preemption signal (`after_step`), checkpoint-{epoch}.pth every `every_epochs`
    epochs and after the last one, older ones pruned to `keep_last` (`after_epoch`), and
    checkpoint-best.pth (`save_best`). Every file stores the resolved run `config`. A torch run's
    files hold the whole training state (model, optimizer, scaler, RNG of every rank, `extra()`),
    so that at an epoch end checkpoint-latest.pth is a hard link of the epoch file; a DeepSpeed
    run keeps its state in output_dir/deepspeed/ and writes plain fp32 weights to the epoch files.

    Nothing is written from non-finite weights: every write first reads the run's `nonfinite`
    watch (the losses and gradient norms of the steps since its last check) and then checks the
    parameters; either stops the run naming the last good checkpoint.

    Args:
        model: the core module (plain state-dict names, no "module." / "_orig_mod.").
        engine: the DeepSpeed engine training `model`, if any.
        extra: () -> further plain entries saved with the state (epoch totals, best, EMA weights).
        skip_nonfinite: non-finite steps the whole run may skip (--skip_nonfinite; the count is
            saved in every checkpoint and resumed).
    """

    def __init__(self, env: DistEnv, output_dir: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: Optional[torch.amp.GradScaler], config: Dict[str, Any], steps_per_epoch: int,
                 every_steps: int, every_epochs: int, epochs: int, keep_last: int = 0, engine=None,
                 extra: Callable[[], Dict[str, Any]] = dict, skip_nonfinite: int = 0):
        self.env, self.output_dir, self.model, self.optimizer, self.scaler = env, output_dir, model, optimizer, scaler
        self.config, self.steps_per_epoch, self.engine, self.extra = config, steps_per_epoch, engine, extra
        self.every_steps, self.every_epochs, self.epochs, self.keep_last = every_steps, every_epochs, epochs, keep_last
        self.preemption = Preemption()
        self.stopping = False
        self.nonfinite = NonFiniteWatch(skip_nonfinite)
        # metrics.jsonl step number = training step + this: a resume that restarts the step
        # arithmetic (another batch size, accumulation, world size) numbers its steps after the
        # earlier ones instead of reusing their numbers.
        self.log_step_offset = 0

    def resume(self, resume: str, auto_resume: bool) -> Optional[Tuple[str, Dict[str, Any]]]:
        """(path, state) restored from `resume`, else (with `auto_resume`) from the newest valid
        checkpoint in output_dir; None for a fresh run."""
        if self.engine is None:
            found = load_training_state(resume, auto_resume, self.output_dir, model=self.model,
                                        optimizer=self.optimizer, scaler=self.scaler)
        else:
            where = resume or (self.output_dir if auto_resume else "")
            found = deepspeed_support.load(self.engine, where) if where else None
            if resume and found is None:
                raise SystemExit(f"--resume {resume}: no DeepSpeed checkpoint there (expected an output folder, "
                                 f"its deepspeed/ folder or a deepspeed/step-N folder)")
        if found:
            path, state = found
            self.nonfinite.skipped = int(state.get("nonfinite_skipped", 0))
            self.nonfinite.last_good = f"{path} (step {state['step']})"
            changed = changed_flags(state.get("config") or {}, self.config)
            if changed and self.env.is_main:
                logger.warning("resuming %s with flags that differ from its run: %s", path, "; ".join(changed))
            self.log_step_offset = resume_log_offset(state, self.steps_per_epoch, self.config)
        return found

    def after_step(self, step: int) -> bool:
        """Called by every rank after every optimizer step; True when the run stops for requeue
        (a resumable checkpoint of `step` is then written)."""
        if self.preemption.agreed(step, self.env):
            self.stopping = True
        if self.stopping or (self.every_steps > 0 and step % self.every_steps == 0):
            self._write(checkpoint_path(self.output_dir), step)
        return self.stopping

    def after_epoch(self, epoch: int, step: int) -> None:
        latest = checkpoint_path(self.output_dir)
        if (epoch + 1) % self.every_epochs == 0 or epoch + 1 == self.epochs:
            path = checkpoint_path(self.output_dir, epoch)
            self._write(path, step)
            if self.env.is_main:
                prune_checkpoints(self.output_dir, self.keep_last)
            # The same state: checkpoint-latest.pth becomes a second name of the epoch file.
            torch_run = self.engine is None
            linked = torch_run and self.env.is_main and link_checkpoint(path, latest)
            if torch_run and broadcast_object(linked):
                return
        self._write(latest, step)

    def save_best(self, epoch: int, step: int, metrics: Dict[str, float],
                  ema: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """checkpoint-best.pth: the weights (fp32 masters under DeepSpeed, a collective), `metrics`,
        the config and the EMA weights if any; never resumed from."""
        self._check(step)
        weights = self._weights()
        if self.env.is_main:
            save_checkpoint(os.path.join(self.output_dir, "checkpoint-best.pth"), {
                "model": weights, "epoch": epoch, "step": step, **metrics, "config": self._config(),
                **({"model_ema": ema} if ema is not None else {})})

    def exit_for_requeue(self, step: int) -> None:
        logger.warning("preemption signal: saved a resumable checkpoint at step %d; exiting with %d for requeue",
                       step, REQUEUE_EXIT_CODE)
        cleanup_distributed()
        sys.exit(REQUEUE_EXIT_CODE)

    def _weights(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict() if self.engine is None else deepspeed_support.master_state_dict(self.engine)

    def _config(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self.config))  # primitives only (tuples become lists)

    def check(self) -> None:
        """Stop every rank if a step since the last check had a non-finite loss or gradient norm
        (a collective; call before an evaluation, which would score NaN weights)."""
        self.nonfinite.check()

    def _check(self, step: int) -> None:
        """Before any write: the steps' losses and gradient norms, then the parameters themselves."""
        self.nonfinite.check()
        check_finite(self.model, f"at step {step}", self.nonfinite.last_good)

    def _write(self, path: str, step: int) -> None:
        """Save the training state of `step` to `path` (every rank calls this: it is a collective);
        signals arriving meanwhile wait for the save to finish."""
        self._check(step)
        extra = {**self.extra(), "nonfinite_skipped": self.nonfinite.skipped, "log_step_offset": self.log_step_offset}
        with self.preemption.saving():
            if self.engine is None:
                save_training_state(path, self.env, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                                    step=step, steps_per_epoch=self.steps_per_epoch, config=self.config,
                                    extra=extra)
            else:
                plain = {"epoch": step // self.steps_per_epoch, "step": step, "config": self._config(), **extra}
                deepspeed_support.save(self.engine, self.output_dir, self.env, {
                    **plain, "steps_per_epoch": self.steps_per_epoch, "rng": gather_rng_states(self.env)})
                if path != checkpoint_path(self.output_dir):  # epoch files: plain fp32 weights too
                    weights = self._weights()
                    if self.env.is_main:
                        save_checkpoint(path, {"model": weights, **plain})
        self.nonfinite.last_good = f"{path} (step {step})"


@dataclass
class Training:
    """A core model made ready to train."""
    model: nn.Module  # what the loss calls: the core, DDP-wrapped and/or compiled, or a DeepSpeed engine
    update: Union[TorchUpdate, DeepSpeedUpdate]
    scaler: Optional[torch.amp.GradScaler]
    engine: Optional[Any] = None  # the DeepSpeed engine, when it trains the model


def wrap_for_training(core: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv, *, precision: str,
                      accum_iter: int, clip_grad: Optional[float] = None, compile: bool = False,
                      deepspeed_config: Optional[Dict[str, Any]] = None) -> Training:
    """DeepSpeed engine (with `deepspeed_config`), or the core DDP-wrapped (several processes),
    torch.compile'd (`compile`) and stepped by a torch optimizer with fp16 loss scaling. `core`
    stays the plain module: saving, loading, param groups and evaluation use its names."""
    if deepspeed_config is not None:
        engine = deepspeed_support.initialize(core, optimizer, deepspeed_config, env)
        return Training(engine, DeepSpeedUpdate(engine), None, engine)
    model = wrap_ddp(core, env) if env.world_size > 1 else core
    if compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(env.device.type) if precision == "fp16" else None
    return Training(model, TorchUpdate(model, optimizer, precision, scaler, clip_grad, accum_iter), scaler)


def training_loader(dataset, env: DistEnv, *, batch_size: int, num_workers: int, pin_mem: bool, seed: int,
                    generator: Optional[torch.Generator] = None):
    """(sampler, loader) of this rank's share of `dataset`: a resumable shuffled sampler, full
    batches only, persistent workers. `generator` draws the workers' base seed (default: torch's
    global generator)."""
    sampler = ResumableSampler(len(dataset), env.world_size, env.rank, seed=seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
        pin_memory=pin_mem and env.device.type == "cuda", collate_fn=collate_clips,
        persistent_workers=num_workers > 0, generator=generator, worker_init_fn=WORKER_INIT)
    return sampler, loader
