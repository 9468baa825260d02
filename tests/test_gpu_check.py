"""bench/gpu_check.sh: lint, and one stage of its CPU dry run (the whole dry run takes minutes)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


def test_gpu_check_lints():
    assert subprocess.run(["bash", "-n", SCRIPT], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run installs it)")
    out = subprocess.run(["shellcheck", "-x", SCRIPT], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_stage_logs_and_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "GPU_CHECK_DRY": "1",
           "GPU_CHECK_ONLY": "sync_count", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in open(tmp_path / "gpu_check.jsonl")]
    check = next(r for r in rows if r.get("check") == "sync_count")
    assert check["ok"] and check["syncs_per_step"]["mask_index"] == 0 and check["syncs_per_step"]["boolean_mask"] > 0
    assert [r["stage"] for r in rows if "stage" in r] == ["sync_count"]
    assert (tmp_path / "logs" / "sync_count.log").exists()
    table = (tmp_path / "table.md").read_text()
    assert "| sync_count | ok |" in table and "0 failed check(s)" in table
