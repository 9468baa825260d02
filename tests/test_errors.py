"""What a user sees when they get something wrong: one line on the console, through the real entry points.

A checkpoint of another model size, an output path that cannot be written: each driver exits
non-zero with one error line naming the cause (the sizes; the path and the reason), no traceback on
the console, and keeps the traceback in its log file (train.log) where it has one.
"""
import os
import subprocess
import sys

import pytest
import torch

import modeling_finetune
import modeling_pretrain
import weights
from datasets.synthetic import make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv, cwd, timeout=240):
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT})
    return proc.returncode, proc.stderr


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if " ERROR " in line or ": error: " in line]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=4, num_val=4, num_test=4, frames=8, height=32, width=32, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def vit_tiny(tmp_path_factory):
    """A ViT-Ti backbone checkpoint (fine-tuning layout, no head)."""
    path = tmp_path_factory.mktemp("ckpt") / "vit_tiny.pth"
    model = modeling_finetune.vit_tiny_patch16_224(img_size=32, all_frames=4, num_classes=0)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def pretrain_tiny(tmp_path_factory):
    """A ViT-Ti SIGMA-MLP pretraining checkpoint with its run config (what run_sigma_vis.py reads)."""
    path = tmp_path_factory.mktemp("ckpt") / "pretrain_tiny.pth"
    model = modeling_pretrain.MODELS["pretrain_videomae_tiny_patch16_224"](
        img_size=32, all_frames=4, decoder_depth=1, target_type="mlp", loss_func="SWAV", num_prototypes=8)
    config = {"model": "pretrain_videomae_tiny_patch16_224", "target_type": "mlp", "num_prototypes": 8,
              "input_size": 32, "num_frames": 4, "sampling_rate": 2}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 1, "step": 2}, path)
    return str(path)


CLIP = ["--input_size", "32", "--short_side_size", "32", "--num_frames", "4", "--sampling_rate", "2",
        "--num_workers", "0"]


@pytest.mark.e2e
@pytest.mark.parametrize("script, extra", [
    ("run_class_finetuning.py", ["--epochs", "1", "--warmup_epochs", "0", "--batch_size", "2"]),
    ("evals.knn", []),
])
def test_a_checkpoint_of_another_size_is_one_line_and_the_traceback_stays_in_the_log(data, vit_tiny, tmp_path,
                                                                                      script, extra):
    out = tmp_path / "run"
    entry = ["-m", script] if script.startswith("evals.") else [os.path.join(ROOT, script)]
    code, stderr = _run([*entry, "--model", "vit_small_patch16_224", "--finetune", vit_tiny,
                         "--data_set", "custom", "--nb_classes", "4", "--data_path", data, *CLIP, *extra,
                         "--output_dir", str(out)], cwd=tmp_path)
    assert code == 1
    errors = _error_lines(stderr)
    assert len(errors) == 1, stderr
    assert errors[0].endswith(f"run failed: {vit_tiny}: checkpoint is ViT-Ti (embed 192, 12 blocks); --model asks "
                              f"for ViT-S (embed 384, 12 blocks) (--model vit_tiny_patch16_224 fits it)"), errors[0]
    assert "Traceback" not in stderr and len(stderr) < 1500, stderr  # not every tensor, not twice
    log = "knn.log" if script == "evals.knn" else "train.log"
    text = (out / log).read_text()
    assert "Traceback (most recent call last)" in text and "CheckpointMismatch" in text
    # The failed start says what it left behind: the log, nothing else.
    assert sorted(os.listdir(out)) == [log]
    assert f"the only file this run left in {out}" in stderr


def test_a_checkpoint_with_other_tensors_is_named_in_a_short_line(vit_tiny, tmp_path):
    state = torch.load(vit_tiny, weights_only=True)["model"]
    state = {k: (v[..., :1] if k.endswith("mlp.fc1.weight") else v) for k, v in state.items()}  # same size, other MLP
    path = tmp_path / "odd.pth"
    torch.save({"model": state}, path)
    model = modeling_finetune.vit_tiny_patch16_224(img_size=32, all_frames=4, num_classes=0)
    with pytest.raises(ValueError, match=r"does not match the model: blocks\.0\.mlp\.fc1\.weight.*\(12 tensors in all\)"
                       ) as error:
        weights.load_pretrained_weights(model, str(path))
    assert len(str(error.value)) < 500


def _unwritable(tmp_path):
    """An output path no process can create, as root too: below a regular file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    return str(blocker / "out")


# One driver per error path: shutdown.run_driver (the training and evaluation drivers, which all open their
# output folder in runtime.start_run), run_sigma_vis.py's own, shutdown.run_tool (data and weight tools).
# ALL_DRIVERS=1 runs every driver (about 20 s each on a loaded CPU, most of it importing torch).
ONE_PER_PATH = ["run_sigma_pretraining.py", "evals.knn", "run_sigma_vis.py", "datasets.prepare", "hf_weights.py"]
EVERY_DRIVER = ONE_PER_PATH + ["run_class_finetuning.py", "evals.probe", "evals.segmentation",
                               "datasets.synthetic", "datasets.synthetic_vos"]


@pytest.mark.e2e
@pytest.mark.parametrize("driver", EVERY_DRIVER if os.environ.get("ALL_DRIVERS") else ONE_PER_PATH)
def test_an_output_path_that_cannot_be_written_is_one_line(data, vit_tiny, pretrain_tiny, tmp_path, driver):
    out = _unwritable(tmp_path)
    argv = {
        "run_sigma_pretraining.py": ["--data_path_csv", os.path.join(data, "pretrain.csv"), "--output_dir", out],
        "run_class_finetuning.py": ["--data_set", "custom", "--nb_classes", "4", "--data_path", data,
                                    "--output_dir", out],
        "evals.knn": ["--random_init", "--data_set", "custom", "--nb_classes", "4", "--data_path", data,
                      "--output_dir", out],
        "evals.probe": ["--random_init", "--data_set", "custom", "--data_path", data, "--output_dir", out],
        "evals.segmentation": ["--random_init", "--data_path", data, "--output_dir", out],
        "run_sigma_vis.py": ["--checkpoint", pretrain_tiny, "--video",
                             os.path.join(data, "val", "left_to_right", "00000.mp4"), "--device", "cpu",
                             "--output_dir", out],
        "datasets.prepare": ["csv-from-folders", "--root", os.path.join(data, "train"), "--out_dir", out],
        "datasets.synthetic": ["--out", out, "--num_train", "1", "--num_val", "1", "--num_test", "1"],
        "datasets.synthetic_vos": ["--out", out, "--videos", "1", "--frames", "2"],
        "hf_weights.py": ["export", vit_tiny, out],
    }[driver]
    entry = ["-m", driver] if driver.startswith(("datasets.", "evals.")) else [os.path.join(ROOT, driver)]
    code, stderr = _run([*entry, *argv], cwd=tmp_path)
    assert code == 1, stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and errors[0].endswith(f"{out}: Not a directory"), stderr
    assert "Traceback" not in stderr, stderr
