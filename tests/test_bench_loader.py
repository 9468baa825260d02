"""bench/bench_loader.py: the real DataLoader with workers, per-core figures and the node arithmetic."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_loader  # noqa: E402
from datasets.synthetic import make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=4, num_val=1, num_test=1, frames=24, height=48, width=64, seed=0)
    return str(root)


def test_official_path_item_is_a_normalised_clip_and_a_tube_mask(videos):
    paths = [os.path.join(videos, line.split()[0]) for line in open(os.path.join(videos, "pretrain.csv"))]
    clip = bench_loader.ClipConfig(num_frames=4, sampling_rate=2, input_size=32)
    video, mask = bench_loader.OfficialPathDataset(paths, clip, mask_ratio=0.75)[0]
    assert video.shape == (3, 4, 32, 32)
    # ImageNet-normalised: a uint8 frame maps into [-mean/std, (1 - mean)/std].
    assert -2.2 < video.min() and video.max() < 2.7 and video.std() > 0.05
    per_slot = mask.reshape(2, 4)  # 2 temporal slots x (32/16)^2 tokens, the same tokens in every slot
    assert (per_slot.sum(1) == 3).all() and (per_slot[0] == per_slot[1]).all()


@pytest.mark.slow
def test_loader_bench_reports_per_core_figures_and_the_node_feed(videos):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_loader.py"), "--csv", os.path.join(videos, "pretrain.csv"),
         "--data_path", videos, "--variants", "ours", "ours_gpu_augment", "official", "--num_workers", "1", "--batch_size", "2",
         "--warmup", "1", "--batches", "2", "--rounds", "1", "--num_frames", "4", "--sampling_rate", "2",
         "--input_size", "32", "--mask_ratio", "0.75", "--device", "cpu", "--gpu_clips_per_s", "100",
         "--cores_per_gpu", "9"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    summaries = {r["summary"]: r for r in rows if "summary" in r}
    assert sorted(summaries) == ["official", "ours", "ours_gpu_augment"]
    for r in summaries.values():
        assert r["num_workers"] == 1 and r["worker_cpu_ms_per_clip"] > 0 and r["wall_clips_per_s"] > 0
        per_core = 1e3 / r["worker_cpu_ms_per_clip"]
        assert r["clips_per_s_per_core"] == pytest.approx(per_core, rel=0.01)
        assert r["cores_needed_per_gpu"] == pytest.approx(100 / per_core, rel=0.02)
        assert r["gpu_fed_fraction"] == pytest.approx(8 * per_core / 100, rel=0.02)  # 9 cores: 8 workers


def test_feed_arithmetic():
    # 40 ms of worker CPU per clip = 25 clips/s per core; a 1000 clips/s GPU needs 40 cores;
    # 16 cores per GPU (15 workers) keep 375 / 1000 of it fed.
    assert bench_loader.feed({"worker_cpu_ms_per_clip": 40.0}, 1000.0, 16) == {
        "clips_per_s_per_core": 25.0, "cores_needed_per_gpu": 40.0, "gpu_fed_fraction": 0.375}


def test_stamped_collate_counts_the_collating_worker_cpu():
    collate = bench_loader.StampedCollate(None)
    batch, worker, before = collate([torch.zeros(2), torch.ones(2)])
    assert worker == -1 and torch.equal(batch, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    x = torch.randn(256, 256)
    for _ in range(200):
        x = x @ x.T / 256
    assert collate([x])[2] > before
