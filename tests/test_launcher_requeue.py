"""scripts/common.sh's torchrun path keeps the requeue status that torchrun itself turns into 1.

torchrun is replaced by a fake agent (the PYTHON the launcher calls) with one worker child that,
like a driver, saves checkpoint-latest.pth when USR1 arrives and exits 75; the agent exits 1.
"""
import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_AGENT = """#!/usr/bin/env bash
# Called as: PYTHON -m torch.distributed.run ... SCRIPT; one worker, its status becomes 1 or 0.
bash -c '
    trap "[[ \\$SAVE == 1 ]] && touch \\"\\$OUTPUT_DIR/checkpoint-latest.pth\\"; exit 75" USR1
    touch "$OUTPUT_DIR/started"
    for _ in $(seq 40); do sleep 0.05; done
    exit 3' &
wait $! && exit 0
exit 1
"""


def _launch(tmp_path, save: bool, send_signal: bool) -> int:
    agent = tmp_path / "fake_python"
    agent.write_text(FAKE_AGENT)
    agent.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": str(agent), "OUTPUT_DIR": str(out), "NPROC_PER_NODE": "1",
           "SAVE": "1" if save else "0"}
    proc = subprocess.Popen(["bash", "-c", f"source {ROOT}/scripts/common.sh; sigma_torchrun driver.py"], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (out / "started").exists():
        assert time.monotonic() < deadline, "the fake worker did not start"
        time.sleep(0.02)
    if send_signal:
        proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.mark.parametrize("save, send_signal, expected", [
    (True, True, 75),  # preempted, checkpoint written: requeue
    (False, True, 1),  # signalled but nothing saved: a failure, not a requeue
    (True, False, 1),  # a worker failed on its own
])
def test_torchrun_preemption_keeps_the_requeue_status(tmp_path, save, send_signal, expected):
    rc, err = _launch(tmp_path, save, send_signal)
    assert rc == expected, err
    if send_signal:
        assert "forwarding to torchrun's workers" in err, err
