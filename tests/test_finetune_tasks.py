"""Fine-tuning beyond one classifier head, end to end on generated videos and images: the attentive
probe grid, Charades multi-label (mAP of max-merged views), UCFRep repetition counting, ImageNet
folders; and the task maths on hand-made views."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

import run_class_finetuning as ft
from datasets.synthetic import make_dataset
from engine_for_finetuning import Views
from evals.severe_metrics import charades_map
from evals.tasks import Task

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=4, num_test=4, frames=16, height=48, width=64, seed=0)
    return str(root)


def _argv(data, out, *extra):
    return ["--model", "vit_tiny_patch16_224", "--data_path", data, "--input_size", "32", "--short_side_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--num_sample", "1", "--epochs", "1",
            "--warmup_epochs", "0", "--num_workers", "0", "--log_every", "1", "--test_num_segment", "2",
            "--test_num_crop", "1", "--output_dir", str(out), *extra]


def _videos(data, split):
    return [line.split()[0] for line in open(os.path.join(data, f"{split}.csv"))]


def test_attentive_probe_grid_trains_every_head_on_a_frozen_backbone(data, tmp_path):
    args = ft.get_args(_argv(data, tmp_path, "--data_set", "custom", "--nb_classes", "4", "--probe", "attentive",
                             "--probe_lr_scales", "1", "0.1", "--probe_weight_decays", "0.01", "0.1",
                             "--probe_depth", "1", "--probe_num_heads", "2", "--lr", "0.01", "--epochs", "2"))
    model, _ = ft.build_model(args, 4)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads = [p.clone() for p in model.grid.heads[0].parameters()]
    ft.main(args)
    state = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    saved = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert all(torch.equal(saved[k], v) for k, v in backbone.items())  # frozen
    trained = [state["model"][f"grid.heads.0.{n}"] for n, _ in model.grid.heads[0].named_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(trained, heads))  # the heads learned
    groups = state["optimizer"]["param_groups"]
    assert sorted((g["lr_scale"], g["weight_decay"]) for g in groups) == [(0.1, 0.01), (0.1, 0.1), (1.0, 0.01),
                                                                         (1.0, 0.1)]
    epochs = [json.loads(line) for line in open(tmp_path / "log.txt")]
    assert len(epochs) == 2 and all({f"val_head{h}_acc1" for h in range(4)} <= set(e) for e in epochs)
    result = json.loads((tmp_path / "test_results.json").read_text())
    # V-JEPA 2: the head best on the final epoch's validation, tested with the final weights.
    final = epochs[-1]
    best = max(range(4), key=lambda h: (final[f"val_head{h}_acc1"], -h))
    assert result["head"] == final["val_head"] == best and len(result["per_head"]) == 4
    assert result["head_chosen_on"] == "the validation of epoch 1"
    assert result["acc1"] == result["per_head"][result["head"]]["acc1"]
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == 4 and all(r["pred"] == r[f"pred_head{result['head']}"] for r in rows)
    assert {f"pred_head{h}" for h in range(4)} <= set(rows[0])


def test_a_diverging_probe_head_is_retired_and_the_others_report(data, tmp_path, caplog):
    """--probe_lr_scales 1e9 1: head 0 diverges in the first steps; head 1 trains on, is reported, and
    every checkpoint is finite; --eval of the checkpoint skips the retired head too."""
    argv = _argv(data, tmp_path, "--data_set", "custom", "--nb_classes", "4", "--probe", "attentive",
                 "--probe_lr_scales", "1e9", "1", "--probe_weight_decays", "0.01", "--probe_depth", "1",
                 "--probe_num_heads", "2", "--lr", "0.01", "--epochs", "2")
    model, _ = ft.build_model(ft.get_args(argv), 4)
    initial = [p.clone() for p in model.grid.heads[1].parameters()]
    with caplog.at_level("WARNING", logger="sigma"):
        ft.main(ft.get_args(argv))
    assert sum("head 0 diverged" in r.getMessage() for r in caplog.records) == 1
    state = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["model"]["grid.alive"].tolist() == [False, True]
    assert [g["dead"] for g in state["optimizer"]["param_groups"]] == [True, False]
    trained = [state["model"][f"grid.heads.1.{n}"] for n, _ in model.grid.heads[1].named_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(trained, initial))  # the live head learned
    epochs = [json.loads(line) for line in open(tmp_path / "log.txt")]
    assert all(np.isfinite(e["train_loss"]) and e["val_head"] == 1 for e in epochs)
    result = json.loads((tmp_path / "test_results.json").read_text())
    assert result["head"] == 1 and result["per_head"][0]["diverged"] and np.isfinite(result["acc1"])
    ft.main(ft.get_args(argv + ["--eval", "--resume", str(tmp_path / "checkpoint-latest.pth"),
                                "--output_dir", str(tmp_path / "eval")]))
    again = json.loads((tmp_path / "eval" / "test_results.json").read_text())
    assert again["head"] == 1 and again["per_head"][0]["diverged"] and again["head_chosen_on"] == "the test itself"


def test_charades_multilabel_end_to_end(data, tmp_path):
    root = tmp_path / "charades"
    root.mkdir()
    for split, name in (("train", "Charades_v1_train.csv"), ("test", "Charades_v1_test.csv")):
        with open(root / name, "w") as f:
            f.write("id,actions,length\n")
            for i, path in enumerate(_videos(data, split)):
                shutil.copy(os.path.join(data, path), root / f"{split}{i}.mp4")
                f.write(f'{split}{i},"c{i % 3:03d} 0.0 1.0;c{(i + 1) % 5:03d} 0.5 2.0",3.0\n')
    ft.main(ft.get_args(_argv(str(root), tmp_path / "out", "--data_set", "Charades", "--lr", "0.01")))
    result = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert result["task"] == "multilabel" and 0 <= result["mAP"] <= 100 and result["num_videos"] == 4
    assert result["views"] == "2x1"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["task"] == "multilabel" and config["nb_classes"] == 157


def test_ucfrep_counting_end_to_end(data, tmp_path):
    from scipy.io import savemat

    root = tmp_path / "ucfrep"
    for split, source in (("train", "train"), ("val", "val")):
        (root / "annotations" / split).mkdir(parents=True)
        for i, path in enumerate(_videos(data, source)):
            name = f"v_JumpRope_g{i + 1:02d}_c0{1 if split == 'train' else 2}"
            bounds = np.linspace(0, 15, 3 + i % 3)  # 2 to 4 repetitions
            savemat(str(root / "annotations" / split / f"{name}.mat"), {"label": {
                "duration": np.array([[16]]), "start_frame": np.array([[0]]), "end_frame": np.array([[15]]),
                "temporal_bound": bounds[:, None]}})
            (root / "videos" / "JumpRope").mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.join(data, path), root / "videos" / "JumpRope" / f"{name}.avi")
    out = tmp_path / "out"
    ft.main(ft.get_args(_argv(str(root), out, "--data_set", "UCFRep", "--data_root", str(root / "videos"),
                              "--lr", "0.01", "--mixup", "0.8")))
    result = json.loads((out / "test_results.json").read_text())
    assert result["task"] == "counting" and result["num_videos"] == 4 and result["mae"] >= 0
    rows = [line.strip().split(",") for line in open(out / "predictions.csv")][1:]
    target = np.array([float(r[2]) for r in rows])
    predicted, rounded = np.array([float(r[3]) for r in rows]), np.array([float(r[4]) for r in rows])
    assert sorted(target.tolist()) == [2.0, 2.0, 3.0, 4.0]
    assert np.array_equal(rounded, np.round(predicted))  # SEVERE scores rounded counts (half to even)
    errors = np.abs(rounded - target)
    assert result["mae"] == pytest.approx(float(np.mean(errors / target)), rel=1e-4, abs=1e-6)
    assert result["obo"] == pytest.approx(float(np.mean(errors <= 1)))


def test_linear_probe_on_imagenet_folders(tmp_path):
    from PIL import Image

    root = tmp_path / "imagenet"
    colours = {"n01": (220, 30, 30), "n02": (30, 220, 30)}
    for split, n in (("train", 4), ("val", 2)):
        for wnid, colour in colours.items():
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), tuple(c + 5 * i for c in colour)).save(root / split / wnid / f"{i}.JPEG")
    out = tmp_path / "out"
    ft.main(ft.get_args(_argv(str(root), out, "--data_set", "ImageNet", "--nb_classes", "2", "--linear_probing",
                              "--lr", "0.1", "--test_num_segment", "1")))
    result = json.loads((out / "test_results.json").read_text())
    assert result["num_videos"] == 4 and result["views"] == "1x1"
    assert len(_predictions := open(out / "predictions.csv").readlines()) == 5  # header + every image


def test_multilabel_views_merge_by_max_and_score_as_charades():
    task = Task("multilabel")
    # Two videos, video 0 with two views (one repeated: padding), video 1 with one; K = 2.
    views = Views(index=torch.tensor([0, 0, 0, 1]), segment=torch.tensor([0, 1, 1, 0]), crop=torch.zeros(4).long(),
                  label=torch.zeros(4).long(), output=torch.tensor([[0.2, 0.9], [0.7, 0.1], [0.6, 0.1], [0.5, 0.4]]))
    videos = task.merge(views)
    torch.testing.assert_close(videos.output, torch.tensor([[0.7, 0.9], [0.5, 0.4]]))
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    [metrics] = task.metrics(videos, targets)
    assert metrics["mAP"] == pytest.approx(charades_map(videos.output, targets)["mAP"])
    assert metrics["mAP"] == pytest.approx(100.0 * (1.0 + 0.5) / 2)  # class 0 ranked first; class 1 second of two


def test_grid_outputs_are_scored_per_head():
    task = Task("classification", heads=2)
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0]], [[0.0, 5.0], [0.0, 5.0]]])  # [H=2, B=2, K=2]
    out = task.view_outputs(logits)  # [B, H*K]
    views = Views(torch.arange(2), torch.zeros(2).long(), torch.zeros(2).long(), torch.tensor([0, 1]), out)
    per_head = task.metrics(task.merge(views), None)
    assert [m["acc1"] for m in per_head] == [100.0, 50.0]
    loss, stats = task.loss(logits.requires_grad_(), {"label": torch.tensor([0, 1])})
    loss.backward()
    assert logits.grad[0].abs().sum() > 0 and stats["loss_best_head"] < stats["loss"]
