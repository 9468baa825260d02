"""--eval_every: the periodic frozen kNN of pretraining is evals.knn's score of the same weights."""
import json
import os

import pytest

import evals.knn
import run_sigma_pretraining as run
from datasets.synthetic import make_dataset

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=4, num_test=1, frames=16, height=48, width=64, seed=0)
    return str(root)


def _argv(data, out, *extra):
    return ["--data_path", data, "--data_path_csv", os.path.join(data, "pretrain.csv"), "--input_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--epochs", "2",
            "--warmup_epochs", "1", "--num_prototypes", "16", "--decoder_depth", "1", "--num_workers", "0",
            "--model", "pretrain_videomae_tiny_patch16_224", "--log_every", "1", "--output_dir", str(out), *extra]


def test_periodic_knn_is_logged_and_equals_the_knn_eval_of_the_checkpoint(data, tmp_path):
    # One DataLoader worker, as production runs have: the monitor's loaders start their own.
    run.main(run.get_args(_argv(data, tmp_path / "pre", "--eval_every", "1", "--eval_data_path", data,
                                "--num_workers", "1",
                                "--eval_k", "3")))
    records = [json.loads(line) for line in open(tmp_path / "pre" / "metrics.jsonl")]
    scores = [r for r in records if "knn_top1" in r]
    assert [(r["epoch"], r["step"]) for r in scores] == [(0, 4), (1, 8)]  # after each epoch, at its last step
    assert all("loss" in r for r in records if "knn_top1" not in r)
    assert all(r["knn_queries"] == 4 and r["knn_bank"] == 8 for r in scores)  # every listed video scored
    epochs = [json.loads(line) for line in open(tmp_path / "pre" / "log.txt")]
    # The epoch's line and checkpoint come first: the monitor never costs a checkpoint.
    assert [e["epoch"] for e in epochs] == [0, 1] and not any("knn_top1" in e for e in epochs)
    assert os.path.isdir(tmp_path / "pre" / "tb")
    # The same protocol run by evals.knn on the weights saved after the last epoch.
    results = evals.knn.main(evals.knn.get_args([
        "--model", "vit_tiny_patch16_224", "--finetune", str(tmp_path / "pre" / "checkpoint-latest.pth"),
        "--data_set", "custom", "--nb_classes", "4", "--data_path", data, "--input_size", "32",
        "--short_side_size", "32", "--num_frames", "4", "--sampling_rate", "2", "--num_workers", "0",
        "--k", "3", "--output_dir", str(tmp_path / "knn")]))
    assert results["top1"] == pytest.approx(scores[-1]["knn_top1"]) and results["num_val"] == 4


def test_eval_every_needs_a_labelled_list(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.get_args(_argv(data, tmp_path, "--eval_every", "1"))
    assert "--eval_every needs --eval_data_path" in capsys.readouterr().err
