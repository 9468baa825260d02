"""Run a driver as a real process with one fault injected (tests/test_faults.py).

    python tests/fault_launcher.py FAULT[:N] DRIVER.py [driver flags...]

The fault is patched into the project's modules before the driver script runs as __main__
(through its real `run_driver` entry point), so the process dies, or survives, exactly as a user's
would. Faults:
    nan_loss:N      the pretraining loss is NaN from the N-th forward pass on
    nan_params:N    a parameter becomes NaN after the N-th optimizer step (caught at the next save)
    kill_after_epoch_log:E   SIGKILL after epoch E's log.txt line, before its checkpoint
    kill_after_step:S        SIGKILL right after global step S (and its rolling save)
    kill_rank1_at_step:S     rank 1 SIGKILLs itself at global step S (its peer must not hang)
    slow_save:SECONDS        every checkpoint save writes `save_started` in the output dir, then
                             sleeps before saving (to signal a process inside a save)
    nan_at:N[,N...][@R]      the loss of the N-th micro-batch (counted from 1 in this process, any
                             driver) is NaN, on rank R only when given
    unreadable_on_rank:R     rank R's data-loader workers find every video with an even number in its
                             name unreadable (the others replace them)
    monitor_fails:N          the kNN monitor's feature pass raises on its N-th call and later
"""
import os
import runpy
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine_for_finetuning  # noqa: E402
import engine_for_pretraining  # noqa: E402
import evals.common  # noqa: E402
import runtime  # noqa: E402
import training_loop  # noqa: E402
from datasets import video_dataset  # noqa: E402
from datasets.decoding import VideoError  # noqa: E402


def _kill_self() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def nan_loss(n: int) -> None:
    real, calls = engine_for_pretraining.compute_loss, []

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= n else loss), stats

    engine_for_pretraining.compute_loss = poisoned


def nan_params(n: int) -> None:
    real, steps = training_loop.TorchUpdate.backward, []

    def backward(self, loss, last_micro):
        norm = real(self, loss, last_micro)
        if norm is not None:
            steps.append(1)
            if len(steps) == n:
                first = next(p for g in self.optimizer.param_groups for p in g["params"])
                first.data.fill_(float("nan"))
        return norm

    training_loop.TorchUpdate.backward = backward


def kill_after_epoch_log(epoch: int) -> None:
    real = runtime.Checkpointer.after_epoch

    def after_epoch(self, e, step):
        if e == epoch:
            _kill_self()
        real(self, e, step)

    runtime.Checkpointer.after_epoch = after_epoch


def kill_after_step(step: int) -> None:
    real = runtime.Checkpointer.after_step

    def after_step(self, s):
        stopping = real(self, s)
        if s == step:
            _kill_self()
        return stopping

    runtime.Checkpointer.after_step = after_step


def kill_rank1_at_step(step: int) -> None:
    real = runtime.Checkpointer.after_step

    def after_step(self, s):
        if s == step and self.env.rank == 1:
            _kill_self()
        return real(self, s)

    runtime.Checkpointer.after_step = after_step


def slow_save(seconds: int) -> None:
    real = runtime.save_training_state

    def save_training_state(path, env, **kwargs):
        open(os.path.join(os.path.dirname(path), "save_started"), "w").close()
        time.sleep(seconds)
        real(path, env, **kwargs)

    runtime.save_training_state = save_training_state


def nan_at(spec: str) -> None:
    calls, _, rank = spec.partition("@")
    poisoned = {int(c) for c in calls.split(",")}
    counter = [0]

    def wrap(train_steps):
        def patched(model, loader, update, schedule, loss_fn, **kwargs):
            def poisoning(batch):
                loss, stats = loss_fn(batch)
                counter[0] += 1
                if counter[0] in poisoned and (not rank or os.environ.get("RANK", "0") == rank):
                    loss = loss * float("nan")
                    stats = {**stats, "loss": loss.detach()}
                return loss, stats
            return train_steps(model, loader, update, schedule, poisoning, **kwargs)
        return patched

    engine_for_pretraining.train_steps = wrap(engine_for_pretraining.train_steps)
    engine_for_finetuning.train_steps = wrap(engine_for_finetuning.train_steps)


def unreadable_on_rank(rank: str) -> None:
    real = video_dataset.VideoClipDataset._decode

    def _decode(self, path, segment, rng):
        digits = "".join(c for c in os.path.splitext(os.path.basename(path))[0] if c.isdigit())
        if os.environ.get("RANK", "0") == rank and digits and int(digits) % 2 == 0:
            raise VideoError(path, "injected: unreadable on this rank")
        return real(self, path, segment, rng)

    video_dataset.VideoClipDataset._decode = _decode


def monitor_fails(n: str) -> None:
    real, calls = evals.common.predict_views, []

    def predict_views(*args, **kwargs):
        calls.append(1)
        if len(calls) >= int(n):
            raise RuntimeError("injected monitor failure")
        return real(*args, **kwargs)

    evals.common.predict_views = predict_views


FAULTS = {f.__name__: f for f in (nan_loss, nan_params, kill_after_epoch_log, kill_after_step, kill_rank1_at_step,
                                  slow_save, nan_at, unreadable_on_rank, monitor_fails)}
TEXT_VALUED = (nan_at, unreadable_on_rank, monitor_fails)


def main() -> None:
    fault, driver, *argv = sys.argv[1:]
    name, _, value = fault.partition(":")
    FAULTS[name](value if FAULTS[name] in TEXT_VALUED else int(value))
    sys.argv = [driver, *argv]
    runpy.run_path(driver, run_name="__main__")


if __name__ == "__main__":
    main()
