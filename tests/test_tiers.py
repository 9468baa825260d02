"""The test tiers (pytest.ini markers, README "Tests"): every test file collects tests, the quick tier
is not empty and holds exactly the tests without a slow / e2e / slurm / cuda mark, and every marker a
test uses is registered."""
import configparser
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import COLLECTED, OUTSIDE_QUICK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}

# Runs in a fresh interpreter: collects tests/ (no test runs) and prints one JSON line per test:
# its file and its marks.
COLLECT = """
import json, sys, pytest
class Marks:
    def pytest_collection_finish(self, session):
        for item in session.items:
            print("ITEM " + json.dumps([item.nodeid.split("::")[0], sorted({m.name for m in item.iter_markers()})]))
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], plugins=[Marks()]))
"""


def all_test_files() -> set:
    return {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))}


@pytest.fixture(scope="module")
def collected():
    """[(test file, marks)] of every test of tests/: this session's when it collected all of tests/ (the
    quick tier, the full suite), else from a collection in a fresh interpreter."""
    if {f for f, _ in COLLECTED} >= all_test_files():
        return list(COLLECTED)
    proc = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return [tuple(json.loads(line[5:])) for line in proc.stdout.splitlines() if line.startswith("ITEM ")]


def registered() -> set:
    ini = configparser.ConfigParser()
    ini.read(os.path.join(ROOT, "pytest.ini"))
    return {line.split(":")[0].strip() for line in ini["pytest"]["markers"].splitlines() if line.strip()}


def test_every_test_file_collects_tests(collected):
    assert all_test_files() - {f for f, _ in collected} == set()


def test_quick_tier_is_the_unmarked_tests(collected):
    quick = [f for f, marks in collected if "quick" in marks]
    assert len(quick) > len(collected) / 2  # the edit-test loop keeps most of the suite
    for file, marks in collected:
        assert ("quick" in marks) == (not set(OUTSIDE_QUICK) & set(marks)), (file, marks)
    for tier in ("slow", "e2e", "cuda"):  # slurm: no pytest test needs a controller (CI: tests/slurm/)
        assert any(tier in marks for _, marks in collected), tier


def test_every_marker_is_registered(collected):
    assert set(OUTSIDE_QUICK) | {"quick"} <= registered()
    used = {m for _, marks in collected for m in marks} - BUILTIN
    assert used <= registered(), used - registered()
    # --strict-markers makes an unregistered marker a collection error (the suite then fails whole).
    ini = configparser.ConfigParser()
    ini.read(os.path.join(ROOT, "pytest.ini"))
    assert "--strict-markers" in ini["pytest"]["addopts"].split()
