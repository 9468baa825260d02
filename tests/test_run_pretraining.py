"""End to end: the pretraining script on generated video files."""
import json
import sys

import torch

import run_sigma_pretraining
from datasets.synthetic import make_dataset


def test_pretraining_runs_on_generated_videos(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_dataset(str(data), num_train=8, num_val=1, num_test=1, frames=16, height=48, width=64, seed=0)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_sigma_pretraining.py", "--data_path", str(data), "--data_path_csv", str(data / "pretrain.csv"),
        "--input_size", "32", "--num_frames", "4", "--batch_size", "4", "--num_sample", "2", "--epochs", "2",
        "--num_prototypes", "16", "--decoder_depth", "1", "--num_workers", "0", "--output_dir", str(out)])
    run_sigma_pretraining.main(run_sigma_pretraining.get_args())
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2 * (8 // 2) and all(r["loss"] > 0 for r in steps)
    assert [r["bad_samples"] for r in records if "bad_samples" in r] == [0, 0]
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert "prototypes" in ckpt["model"] and ckpt["step"] == len(steps)
    assert json.loads((out / "config.json").read_text())["num_sample"] == 2
