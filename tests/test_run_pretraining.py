"""The pretraining driver end to end on generated videos: logs, checkpoints, exact resume,
preemption, corrupt checkpoints, non-finite losses, two processes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import engine_for_pretraining
import run_sigma_pretraining as run
import runtime
from datasets.synthetic import make_dataset

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=1, num_test=1, frames=16, height=48, width=64, seed=0)
    return str(root)


def _argv(data, out, *extra):
    return ["--data_path", data, "--data_path_csv", os.path.join(data, "pretrain.csv"), "--input_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--epochs", "3",
            "--warmup_epochs", "1", "--num_prototypes", "16", "--decoder_depth", "1", "--num_workers", "0",
            "--lr", "0.05", "--log_every", "1", "--save_ckpt_freq", "1", "--output_dir", str(out), *extra]


def _losses(out):
    """Per-step losses, the last record of each step winning (re-run steps after a kill)."""
    steps = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        record = json.loads(line)
        steps[record["step"]] = record["loss"]
    return steps


def _run_subprocess(argv, **kwargs):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_sigma_pretraining.py"), *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_run_writes_logs_checkpoints_and_config(data, tmp_path):
    run.main(run.get_args(_argv(data, tmp_path, "--keep_last_ckpts", "2", "--num_sample", "2",
                                "--batch_size", "4")))
    epochs = [json.loads(line) for line in open(tmp_path / "log.txt")]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert {"train_loss", "train_lr", "n_parameters", "bad_samples", "train_protos_used_target"} <= set(epochs[0])
    assert sorted(_losses(tmp_path)) == list(range(1, 13))  # 8 videos / 2 per step (2 views each) x 3
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("checkpoint")) == [
        "checkpoint-1.pth", "checkpoint-2.pth", "checkpoint-latest.pth"]  # pruned to the last 2
    state = torch.load(tmp_path / "checkpoint-2.pth", map_location="cpu", weights_only=True)
    assert state["step"] == 12 and state["epoch"] == 3 and "prototypes" in state["model"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["precision"] == "fp32" and config["global_batch"] == 4 and config["num_sample"] == 2
    assert os.listdir(tmp_path / "tb")


def test_kill_and_resume_reproduces_losses(data, tmp_path):
    reference = tmp_path / "reference"
    run.main(run.get_args(_argv(data, reference)))
    expected = _losses(reference)
    # Hard kill after step 4 or later (latest checkpoint every 3 steps and at epoch ends), resume.
    killed = tmp_path / "killed"
    proc = _run_subprocess(_argv(data, killed, "--save_ckpt_steps", "3"))
    deadline = time.time() + 120
    while time.time() < deadline and (not (killed / "metrics.jsonl").exists() or max(_losses(killed), default=0) < 4):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert max(_losses(killed)) < 12, "the run finished before it could be killed"
    run.main(run.get_args(_argv(data, killed, "--save_ckpt_steps", "3")))
    resumed = _losses(killed)
    assert sorted(resumed) == sorted(expected)
    for step, loss in expected.items():
        assert abs(resumed[step] - loss) < 1e-6, f"step {step}: {resumed[step]} vs {loss}"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigterm_saves_a_resumable_checkpoint(data, tmp_path, workers):
    # Slurm signals every process of the job: with workers, the whole process group gets it.
    argv = _argv(data, tmp_path, "--save_ckpt_steps", "0", "--save_ckpt_freq", "100", "--num_workers", workers)
    proc = _run_subprocess(argv, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == runtime.REQUEUE_EXIT_CODE, output[-2000:]
    state = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    assert 1 <= state["step"] < 12
    run.main(run.get_args(argv))
    assert sorted(_losses(tmp_path)) == list(range(1, 13))


def test_corrupt_newest_checkpoint_is_skipped(data, tmp_path, caplog):
    run.main(run.get_args(_argv(data, tmp_path, "--epochs", "2")))
    latest = tmp_path / "checkpoint-latest.pth"
    latest.write_bytes(latest.read_bytes()[:1000])  # newest file, now truncated
    run.main(run.get_args(_argv(data, tmp_path, "--epochs", "3")))
    assert any("checkpoint-latest.pth" in r.message for r in caplog.records)
    assert max(_losses(tmp_path)) == 12


def test_nonfinite_loss_stops_cleanly(data, tmp_path, monkeypatch):
    run.main(run.get_args(_argv(data, tmp_path, "--epochs", "1")))
    before = (tmp_path / "checkpoint-latest.pth").read_bytes()
    real = engine_for_pretraining.compute_loss
    calls = []

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 2 else loss), stats

    monkeypatch.setattr(engine_for_pretraining, "compute_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5 .*loss_target"):
        run.main(run.get_args(_argv(data, tmp_path, "--epochs", "2")))
    assert (tmp_path / "checkpoint-latest.pth").read_bytes() == before
    calls.clear()
    other = tmp_path / "skip"
    run.main(run.get_args(_argv(data, other, "--epochs", "1", "--skip_nonfinite", "5")))
    assert len(_losses(other)) == 1  # three of the four steps were skipped


def test_schedule_flags_validated(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.get_args(_argv(data, tmp_path, "--warmup_epochs", "10"))
    assert "--warmup_epochs 10: must be in [0, --epochs 3]" in capsys.readouterr().err
    # Warmup steps are checked once the steps per epoch are known: 3 epochs of 4 steps.
    with pytest.raises(ValueError, match="warmup"):
        run.main(run.get_args(_argv(data, tmp_path, "--warmup_steps", "13")))


def test_two_processes_with_torchrun(data, tmp_path):
    argv = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            os.path.join(ROOT, "run_sigma_pretraining.py"),
            *_argv(data, tmp_path, "--epochs", "2", "--batch_size", "1", "--accum_iter", "2")]
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    epochs = [json.loads(line) for line in open(tmp_path / "log.txt")]
    # 8 videos / (2 ranks x 1 clip x 2 accumulated micro-batches) = 2 steps per epoch
    assert len(epochs) == 2 and sorted(_losses(tmp_path)) == [1, 2, 3, 4]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 4


def test_sigma_dino_with_a_local_teacher_file(data, tmp_path):
    import timm

    teacher = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    torch.save({"teacher": {"backbone." + k: v for k, v in teacher.state_dict().items()}}, tmp_path / "dino.pth")
    out = tmp_path / "run"
    run.main(run.get_args(_argv(data, out, "--target_type", "dino_v1", "--distillation_teacher", "dino_s",
                                "--teacher_ckpt", str(tmp_path / "dino.pth"), "--epochs", "1")))
    state = torch.load(out / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    assert state["model"]["prototypes"].shape == (16, 384) and not any(k.startswith("vit.") for k in state["model"])
    with pytest.raises(ValueError, match="needs --teacher_ckpt"):
        run.main(run.get_args(_argv(data, tmp_path / "x", "--target_type", "dino_v1")))


def test_resume_with_another_batch_size_restarts_the_epoch(data, tmp_path, caplog):
    run.main(run.get_args(_argv(data, tmp_path, "--epochs", "1", "--save_ckpt_steps", "1")))
    latest = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    assert latest["steps_per_epoch"] == 4
    run.main(run.get_args(_argv(data, tmp_path, "--epochs", "2", "--batch_size", "4")))
    assert any("restarting at the beginning of epoch 1" in r.message for r in caplog.records)
    # Epoch 1's 2 steps are numbered after epoch 0's 4 (training steps 3 and 4 of the new arithmetic):
    # the earlier records are kept, no step number is used twice.
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]


def test_compile_flag_trains_the_compiled_model_and_saves_plain_key_names(data, tmp_path, monkeypatch):
    # Dynamo's eager backend: the same OptimizedModule wrapper (and "_orig_mod." names) as inductor,
    # without minutes of C++ code generation; inductor itself is checked in test_objective.py.
    compiled_models = []

    def compile_eager(model, **kwargs):
        compiled = torch._dynamo.optimize("eager")(model)
        compiled_models.append(compiled)
        return compiled

    monkeypatch.setattr(torch, "compile", compile_eager)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run.main(run.get_args(_argv(data, eager, "--epochs", "1")))
    run.main(run.get_args(_argv(data, compiled, "--epochs", "1", "--compile")))
    assert len(compiled_models) == 1 and any(k.startswith("_orig_mod.") for k in compiled_models[0].state_dict())
    a, b = _losses(eager), _losses(compiled)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4)
    keys = [set(torch.load(d / "checkpoint-latest.pth", map_location="cpu", weights_only=True)["model"])
            for d in (eager, compiled)]
    assert keys[0] == keys[1] and not any("_orig_mod" in k for k in keys[1])


def test_decode_short_side_reaches_the_pretraining_dataset(data, tmp_path):
    from distributed import DistEnv
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    for extra, short_side in ((["--decode_short_side", "40"], 40), ([], None)):
        dataset = run.build(run.get_args(_argv(data, tmp_path, *extra)), env)[3]
        assert dataset.decode.short_side == short_side
