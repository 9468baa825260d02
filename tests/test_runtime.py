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
