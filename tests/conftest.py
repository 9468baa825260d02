import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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
