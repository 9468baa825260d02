import os
import sys

# Under pytest-xdist (README's test command runs `-n 2`) every worker is one of several processes on
# the machine's cores: one thread each, for the worker and for every process a test starts, so the
# workers do not oversubscribe the cores. A thread count the caller set is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ["OMP_NUM_THREADS"].isdigit():
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The quick tier (README "Tests"): every test that is not slow, end to end, on Slurm or on CUDA.
OUTSIDE_QUICK = ("slow", "e2e", "slurm", "cuda")


COLLECTED = []  # (test file, its marks) of every test this session collected, before -m / -k deselect any


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(name) for name in OUTSIDE_QUICK):
            item.add_marker(pytest.mark.quick)
        COLLECTED.append((item.nodeid.split("::")[0], sorted({m.name for m in item.iter_markers()})))
