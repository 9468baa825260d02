"""Run machinery shared by the drivers: durations, preemption flags, resume positions."""
import multiprocessing
import os
import signal
import time

import pytest
import torch

from distributed import DistEnv
from checkpointing import resume_position
from run_log import format_duration
from runtime import REQUEUE_EXIT_CODE, Preemption
from shutdown import _WorkerInit


def test_format_duration_does_not_wrap_after_a_day():
    assert format_duration(59) == "00:00:59"
    assert format_duration(3 * 3600 + 4 * 60 + 5) == "03:04:05"
    assert format_duration(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2d 03:04:05"


def test_preemption_records_signals_instead_of_dying():
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        preemption = Preemption()
        assert not preemption.agreed(3, env)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.agreed(4, env) and preemption.signals == [signal.SIGUSR1]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def test_resume_position_mid_epoch_and_after_a_batch_size_change():
    assert resume_position({"step": 25, "steps_per_epoch": 10}, "ckpt", 10) == (2, 25, 5)
    # 25 steps of 10 per epoch -> restart at epoch 3, whose first step is 3 * 4 with 4 per epoch.
    assert resume_position({"step": 25, "steps_per_epoch": 10}, "ckpt", 4) == (3, 12, 0)


@pytest.fixture
def restore_signals():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def test_second_signal_ends_the_run_unless_a_save_is_in_progress(restore_signals, monkeypatch):
    preemption = Preemption()
    os.kill(os.getpid(), signal.SIGTERM)  # the first: a checkpoint at the next agreed step
    os.kill(os.getpid(), signal.SIGTERM)  # the same preemption, forwarded a second time
    assert preemption.signals == [signal.SIGTERM] * 2
    monkeypatch.setattr(Preemption, "DUPLICATE_WINDOW_S", 0.0)
    with pytest.raises(SystemExit) as info:
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.code == 128 + signal.SIGTERM
    saved = []
    preemption = Preemption()
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(SystemExit) as info:
        with preemption.saving():
            os.kill(os.getpid(), signal.SIGTERM)  # waits for the save below
            saved.append(True)
    assert saved == [True] and info.value.code == REQUEUE_EXIT_CODE


def test_after_training_a_signal_exits_for_requeue_at_once(restore_signals):
    preemption = Preemption()
    preemption.disarm()
    with pytest.raises(SystemExit) as info:
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.code == REQUEUE_EXIT_CODE
    preemption = Preemption()
    os.kill(os.getpid(), signal.SIGUSR1)  # pending when training ends
    with pytest.raises(SystemExit):
        preemption.disarm()


def _serve_until_terminated(init, started):
    init(0)
    started.set()
    while True:
        time.sleep(0.05)


def test_workers_ignore_sigterm_until_the_main_process_is_exiting():
    init = _WorkerInit()
    ctx = multiprocessing.get_context()
    started = ctx.Event()
    worker = ctx.Process(target=_serve_until_terminated, args=(init, started), daemon=True)
    worker.start()
    try:
        assert started.wait(30)
        worker.terminate()  # SIGTERM: a preemption of the whole job; the worker keeps serving
        worker.join(1.0)
        assert worker.is_alive()
        init.exiting.set()
        worker.terminate()  # what multiprocessing's exit handler sends
        worker.join(10)
        assert not worker.is_alive() and worker.exitcode == 128 + signal.SIGTERM
    finally:
        if worker.is_alive():
            worker.kill()


def test_resume_in_another_arithmetic_numbers_its_steps_after_the_earlier_ones():
    from checkpointing import changed_flags, resume_log_offset

    state = {"step": 25, "steps_per_epoch": 10, "config": {"batch_size": 2, "seed": 0, "lr": 0.1}}
    assert resume_log_offset(state, 10, {"batch_size": 2, "seed": 0}) == 0  # same arithmetic: in place
    # 4 steps per epoch: training step 12 (epoch 3) is logged as step 12 + 13 = 25, after the saved 25.
    assert resume_log_offset(state, 4) == 13
    # Same steps per epoch, another batch size mid-epoch: the next epoch (step 30) is logged after 25.
    config = {"batch_size": 4, "seed": 0, "lr": 0.2}
    assert resume_position(state, "ckpt", 10, config) == (3, 30, 0)
    assert resume_log_offset(state, 10, config) == -5
    assert resume_log_offset({**state, "log_step_offset": 7}, 10, config) == 2  # offsets add up over resumes
    assert changed_flags(state["config"], config) == ["batch_size: 2 -> 4", "lr: 0.1 -> 0.2"]
    assert changed_flags({"betas": (0.9, 0.95)}, {"betas": [0.9, 0.95], "new": 1}) == ["new: (absent) -> 1"]


def _hold_lock(output_dir, started, release):
    from runtime import RunLock
    RunLock(output_dir).acquire()
    started.set()
    release.wait(30)
    RunLock.release_held()


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, monkeypatch):
    import json
    import socket

    from runtime import RunLock, RunLockError

    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), started, release))
    holder.start()
    try:
        assert started.wait(30)
        with pytest.raises(RunLockError, match=f"in use by another run: pid {holder.pid} on host"):
            RunLock(str(tmp_path)).acquire()
    finally:
        release.set()
        holder.join(30)
    assert not (tmp_path / "run.lock").exists()  # released by its owner
    # Dead pid on this host: taken over. Another host with a fresh heartbeat: refused; a stale one: taken.
    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
    RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    RunLock.release_held()
    (tmp_path / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "job": "7"}))
    with pytest.raises(RunLockError, match="pid 1 on host elsewhere \\(Slurm job 7\\)"):
        RunLock(str(tmp_path)).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # the same job, requeued onto another node
    RunLock(str(tmp_path)).acquire()
    RunLock.release_held()
    monkeypatch.delenv("SLURM_JOB_ID")
    (tmp_path / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    old = time.time() - RunLock.STALE_S - 5
    os.utime(tmp_path / "run.lock", (old, old))
    RunLock(str(tmp_path)).acquire()
    RunLock.release_held()


def test_nonfinite_watch_names_the_first_step_and_a_gradient_only_cause():
    from training_loop import NonFiniteWatch

    watch = NonFiniteWatch()
    yes, no = torch.tensor(True), torch.tensor(False)
    watch.note(4, 1, no, no, {"loss": torch.tensor(1.0)})
    watch.check()  # nothing non-finite: no error, the window starts again
    watch.note(5, 1, no, yes, {"loss": torch.tensor(2.0)})
    watch.note(6, 1, yes, yes, {"loss": torch.tensor(float("nan"))})
    watch.last_good = "out/checkpoint-0.pth (step 4)"
    with pytest.raises(FloatingPointError) as info:
        watch.check()
    assert str(info.value) == ("non-finite gradient norm (finite loss) at step 5 (epoch 1) on rank(s) [0]; loss terms "
                               "of rank 0: {'loss': 2.0}; stopping without saving; the last good checkpoint is "
                               "out/checkpoint-0.pth (step 4)")
