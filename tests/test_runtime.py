"""Run machinery shared by the drivers: durations, preemption flags, resume positions."""
import os
import signal

import torch

from distributed import DistEnv
from runtime import Preemption, format_duration, resume_position


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
