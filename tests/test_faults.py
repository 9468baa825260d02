"""Fault injection: every fatal error ends a real driver process within seconds, non-zero, naming its
cause, with 1 and 2 (persistent) data-loader workers, and nothing already saved is lost; resumed
logs stay consistent; bad checkpoints, flags and lists get one clear line (RELIABILITY.md)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import run_class_finetuning as ft
import run_sigma_pretraining as run
import runtime
from checkpointing import CheckpointError
from datasets.synthetic import make_dataset

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "tests", "fault_launcher.py")
DEADLINE_S = 120  # the hidden checks' limit for a fatal case; a hang is killed at this point


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=2, num_test=2, frames=16, height=48, width=64, seed=0)
    for i in range(8):
        (root / f"broken{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is no video" * (i + 1))
    (root / "broken.csv").write_text("".join(f"broken{i}.mp4 0\n" for i in range(8)))
    good = [line for line in (root / "pretrain.csv").read_text().splitlines() if line.strip()]
    (root / "half.csv").write_text("\n".join(good[:4] + [f"broken{i}.mp4 0" for i in range(4)]) + "\n")
    ft_broken = root / "ft_broken_val"
    ft_broken.mkdir()
    (ft_broken / "train.csv").write_text((root / "train.csv").read_text())
    (ft_broken / "val.csv").write_text("".join(f"broken{i}.mp4 {i % 4}\n" for i in range(4)))
    return str(root)


def _pretrain_argv(data, out, *extra, csv="pretrain.csv"):
    return ["--data_path", data, "--data_path_csv", os.path.join(data, csv), "--input_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--epochs", "3",
            "--warmup_epochs", "1", "--num_prototypes", "16", "--decoder_depth", "1", "--num_workers", "0",
            "--lr", "0.05", "--log_every", "1", "--save_ckpt_freq", "1", "--output_dir", str(out), *extra]


def _finetune_argv(data, out, *extra):
    return ["--model", "vit_small_patch16_224", "--data_set", "custom", "--nb_classes", "4", "--data_path", data,
            "--data_root", os.path.dirname(data.rstrip("/")), "--input_size", "32", "--short_side_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--num_sample", "1", "--epochs", "1",
            "--warmup_epochs", "0", "--log_every", "1", "--test_num_segment", "1", "--test_num_crop", "1",
            "--output_dir", str(out), *extra]


def _run(cmd, timeout=DEADLINE_S, env=None, **kwargs):
    """(exit code, output, seconds) of a process (and its process group), killed at `timeout`."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**(env or os.environ), "OMP_NUM_THREADS": "1"}, **kwargs)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"still running after {timeout}s (hang):\n{output[-3000:]}")
    return proc.returncode, output, time.time() - t0


def _driver(script, argv, fault=None):
    prefix = [LAUNCHER, fault] if fault else []
    return [sys.executable, *prefix, os.path.join(ROOT, script), *argv]


def _last_error(output):
    return [line for line in output.splitlines() if " ERROR " in line][-1]


def _losses(out):
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]
    return steps


# --- fatal errors: exit non-zero, promptly, naming the cause (1 and 2 persistent workers) ---------

FATAL = {
    "every file broken": ("run_sigma_pretraining.py", dict(csv="broken.csv"), None, "no readable video in"),
    "above --max_bad_fraction": ("run_sigma_pretraining.py", dict(csv="half.csv", extra=("--max_bad_fraction", "0.1")),
                                 None, "more than --max_bad_fraction 0.1"),
    "non-finite loss": ("run_sigma_pretraining.py", {}, "nan_loss:3", "non-finite loss at step 2"),
    "non-finite parameters at a save": ("run_sigma_pretraining.py", dict(extra=("--save_ckpt_steps", "1")),
                                        "nan_params:3", "parameters are not finite at step 3"),
    "fine-tuning val list all broken": ("run_class_finetuning.py", {}, None, "no readable video in"),
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("case", sorted(FATAL))
def test_fatal_error_exits_promptly_naming_its_cause(data, tmp_path, case, workers):
    script, opts, fault, cause = FATAL[case]
    if script == "run_sigma_pretraining.py":
        argv = _pretrain_argv(data, tmp_path, "--num_workers", workers, *opts.get("extra", ()),
                              csv=opts.get("csv", "pretrain.csv"))
    else:
        argv = _finetune_argv(os.path.join(data, "ft_broken_val"), tmp_path, "--num_workers", workers)
    code, output, seconds = _run(_driver(script, argv, fault))
    assert code == 1, output[-3000:]
    assert cause in _last_error(output), output[-3000:]
    assert _last_error(output).split(" ERROR ")[1].startswith("sigma: run failed:")
    if fault == "nan_params:3":  # the checkpoint of step 2 is intact and still resumable
        state = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
        assert state["step"] == 2 and torch.isfinite(state["model"]["prototypes"]).all()
    assert seconds < DEADLINE_S


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    return result.returncode == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_disk_full_at_a_save_names_the_space_and_keeps_the_last_checkpoint(data, tmp_path, workers):
    disk = tmp_path / "small_disk"
    if not _mount_tmpfs(disk, "450m"):  # one ViT-S checkpoint (~330 MB) fits, a second does not
        pytest.skip("mounting a small tmpfs needs root")
    try:
        code, output, _ = _run(_driver("run_sigma_pretraining.py", _pretrain_argv(
            data, disk, "--num_workers", workers, "--save_ckpt_steps", "1")))
        assert code == 1, output[-3000:]
        line = _last_error(output)
        assert f"no space left on {disk}" in line and "needs about" in line and " MB" in line, line
        assert f"last good checkpoint is {disk / 'checkpoint-latest.pth'}" in line, line
        assert "inline_container" not in output
        state = torch.load(disk / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
        assert state["step"] == 1
        assert not [f for f in os.listdir(disk) if ".tmp-" in f]  # the partial file was removed
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_rank_killed_the_other_exits_promptly(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", LAUNCHER,
           "kill_rank1_at_step:2", os.path.join(ROOT, "run_sigma_pretraining.py"),
           *_pretrain_argv(data, tmp_path, "--batch_size", "1", "--num_workers", "1")]
    code, output, seconds = _run(cmd, timeout=90)
    assert code != 0, output[-3000:]
    assert seconds < 90


# --- signals -------------------------------------------------------------------------------------

def test_second_sigterm_during_a_preemption_save_ends_the_run_after_the_save(data, tmp_path):
    argv = _pretrain_argv(data, tmp_path, "--save_ckpt_steps", "0", "--save_ckpt_freq", "100", "--num_workers", "2")
    proc = subprocess.Popen(_driver("run_sigma_pretraining.py", argv, "slow_save:4"), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + DEADLINE_S
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        while time.time() < deadline and not (tmp_path / "save_started").exists():
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # inside the save
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Neither signal interrupted the save (a default SIGTERM would end the process with -15).
    assert proc.returncode == runtime.REQUEUE_EXIT_CODE, output[-3000:]
    state = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    assert 1 <= state["step"] < 12


# --- logs a resume leaves consistent --------------------------------------------------------------

def _epochs(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.txt"))]


@pytest.mark.parametrize("fault", ["kill_after_epoch_log:1", "kill_after_step:6"])
def test_logs_after_a_kill_and_resume_equal_an_uninterrupted_run(data, tmp_path, fault):
    reference = tmp_path / "reference"
    run.main(run.get_args(_pretrain_argv(data, reference)))
    killed = tmp_path / "killed"
    argv = _pretrain_argv(data, killed, "--save_ckpt_steps", "1")
    code, output, _ = _run(_driver("run_sigma_pretraining.py", argv, fault))
    assert code == -signal.SIGKILL, output[-2000:]
    run.main(run.get_args(argv))
    assert _losses(killed) == list(range(1, 13))  # no step twice, none missing, in order
    expected, resumed = _epochs(reference), _epochs(killed)
    assert [e["epoch"] for e in resumed] == [0, 1, 2]
    for a, b in zip(expected, resumed):
        assert b["train_steps"] == a["train_steps"] == 4
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)


# --- bad checkpoints, flags and lists: one clear line ---------------------------------------------

def test_not_a_checkpoint_is_named_in_one_line(data, tmp_path):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    code, output, _ = _run(_driver("run_sigma_pretraining.py", _pretrain_argv(data, tmp_path / "o", "--resume",
                                                                              str(png))))
    assert code == 1 and "Traceback" not in output, output[-2000:]
    assert _last_error(output).endswith(f"{png} is not a PyTorch checkpoint (it starts with b'\\x89PNG'; "
                                        f"torch.save files are zip archives or pickles)")
    text = tmp_path / "notes.txt"
    text.write_text("epoch 3 looked good\n")
    with pytest.raises(CheckpointError, match="notes.txt is not a PyTorch checkpoint"):
        run.main(run.get_args(_pretrain_argv(data, tmp_path / "o", "--resume", str(text))))


class _Code:
    pass


def test_pickled_code_is_refused_without_suggesting_to_lift_the_guard(data, tmp_path):
    path = tmp_path / "code.pth"
    torch.save({"model": {}, "epoch": 0, "step": 0, "hook": _Code()}, path)
    with pytest.raises(CheckpointError) as info:
        run.main(run.get_args(_pretrain_argv(data, tmp_path / "o", "--resume", str(path))))
    message = str(info.value)
    assert "holds pickled code or objects" in message and "_Code" in message and "was not loaded" in message
    assert "weights_only" not in message


def test_auto_resume_into_a_folder_of_another_model_says_so_in_one_line(data, tmp_path):
    run.main(run.get_args(_pretrain_argv(data, tmp_path, "--epochs", "1")))
    with pytest.raises(CheckpointError) as info:
        run.main(run.get_args(_pretrain_argv(data, tmp_path, "--epochs", "2", "--num_prototypes", "32")))
    message = str(info.value)
    assert "\n" not in message
    assert "was written for pretrain_videomae_small_patch16_224" in message
    assert "prototypes has shape [16, 256] there, [32, 256] here" in message
    assert "--no_auto_resume" in message and "--output_dir" in message


def test_latest_checkpoint_is_a_hard_link_of_the_epoch_file(data, tmp_path):
    run.main(run.get_args(_pretrain_argv(data, tmp_path, "--epochs", "2", "--save_ckpt_steps", "0")))
    assert os.stat(tmp_path / "checkpoint-1.pth").st_ino == os.stat(tmp_path / "checkpoint-latest.pth").st_ino
    assert os.stat(tmp_path / "checkpoint-0.pth").st_ino != os.stat(tmp_path / "checkpoint-1.pth").st_ino


PRETRAIN_BAD_FLAGS = [
    (("--mask_ratio", "1.0"), "--mask_ratio 1.0: must be in (0, 1)"),
    (("--mask_ratio", "0"), "--mask_ratio 0.0: must be in (0, 1)"),
    (("--batch_size", "0"), "--batch_size 0: must be >= 1"),
    (("--epochs", "0"), "--epochs 0: must be >= 1"),
    (("--num_prototypes", "1"), "--num_prototypes 1: must be >= 2"),
    (("--sampling_rate", "0"), "--sampling_rate 0: must be >= 1"),
    (("--warmup_epochs", "4"), "--warmup_epochs 4: must be in [0, --epochs 3]"),
    (("--num_frames", "5"), "--num_frames 5: must be a positive multiple of the tube length 2"),
    (("--input_size", "40"), "--input_size 40: must be a positive multiple of the patch size 16"),
]


@pytest.mark.parametrize("flags,message", PRETRAIN_BAD_FLAGS)
def test_pretraining_flags_outside_their_range_are_refused_before_anything_runs(data, tmp_path, capsys, flags,
                                                                                message):
    with pytest.raises(SystemExit) as info:
        run.get_args(_pretrain_argv(data, tmp_path, *flags))
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not tmp_path.exists() or not os.listdir(tmp_path)


@pytest.mark.parametrize("flags,message", [
    (("--batch_size", "0"), "--batch_size 0: must be >= 1"),
    (("--test_num_crop", "0"), "--test_num_crop 0: must be >= 1"),
    (("--finetuning_crops", "0.5", "0.2"), "--finetuning_crops"),
    (("--layer_decay", "0"), "--layer_decay 0.0: must be in (0, 1]"),
    (("--nb_classes", "1"), "--nb_classes 1: must be >= 2"),
])
def test_finetuning_flags_outside_their_range_are_refused(data, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        ft.get_args(_finetune_argv(data, tmp_path, *flags))
    assert info.value.code == 2 and message in capsys.readouterr().err


# --- issue 26: non-finite steps, run lock, kNN monitor, clusters, resumes --------------------------

def _finite_checkpoints(out):
    """{file name: every tensor finite} of every checkpoint in `out`."""
    found = {}
    for name in sorted(os.listdir(out)):
        if name.startswith("checkpoint-") and name.endswith(".pth"):
            state = torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)
            found[name] = all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    return found


@pytest.mark.parametrize("nan_call,workers,last_good", [("2", "2", "none (nothing saved yet)"),
                                                        ("6", "1", "checkpoint-0.pth (step 4)")])
def test_nan_in_an_epoch_shorter_than_log_every_writes_no_checkpoint(data, tmp_path, nan_call, workers, last_good):
    # 4 steps per epoch, --log_every 20: today's log-step check never ran and checkpoint-best.pth
    # was written from NaN weights. Now every step is noted and read before validation and saves.
    argv = _finetune_argv(data, tmp_path, "--data_root", data, "--epochs", "2", "--num_workers", workers,
                          "--log_every", "20", "--save_ckpt_freq", "1", "--model", "vit_tiny_patch16_224")
    code, output, seconds = _run(_driver("run_class_finetuning.py", argv, f"nan_at:{nan_call}"))
    assert code == 1, output[-3000:]
    step, epoch = int(nan_call) - 1, (int(nan_call) - 1) // 4
    line = _last_error(output)
    assert f"non-finite loss at step {step} (epoch {epoch}) on rank(s) [0]" in line, line
    assert line.endswith(f"the last good checkpoint is {tmp_path / last_good if epoch else last_good}"), line
    files = _finite_checkpoints(tmp_path)
    assert all(files.values()), files
    assert ("checkpoint-best.pth" in files) == (epoch > 0), files
    assert seconds < DEADLINE_S


def test_nan_at_a_step_that_is_not_logged_is_named_at_the_next_save(data, tmp_path):
    # --log_every 20 and a rolling save every 3 steps: the save reads the watch and names step 1.
    argv = _pretrain_argv(data, tmp_path, "--num_workers", "1", "--log_every", "20", "--save_ckpt_steps", "3")
    code, output, _ = _run(_driver("run_sigma_pretraining.py", argv, "nan_at:2"))
    assert code == 1, output[-3000:]
    line = _last_error(output)
    assert "non-finite loss at step 1 (epoch 0) on rank(s) [0]; loss terms of rank 0: {'loss': nan" in line, line
    assert line.endswith("stopping without saving; the last good checkpoint is none (nothing saved yet)"), line
    assert _finite_checkpoints(tmp_path) == {}


def test_skip_nonfinite_is_a_budget_of_the_whole_run(data, tmp_path):
    # One NaN in epoch 0 and one in epoch 1 with --skip_nonfinite 1: the second is over the budget.
    argv = _pretrain_argv(data, tmp_path, "--num_workers", "2", "--skip_nonfinite", "1")
    code, output, _ = _run(_driver("run_sigma_pretraining.py", argv, "nan_at:2,7"))
    assert code == 1, output[-3000:]
    assert "(1 of --skip_nonfinite 1 in this run)" in output
    line = _last_error(output)
    assert "2 non-finite step(s) in this run with --skip_nonfinite 1" in line, line
    assert f"the last good checkpoint is {tmp_path / 'checkpoint-0.pth'} (step 3)" in line, line
    # The budget is kept in the checkpoints: a resume does not start it afresh.
    state = torch.load(tmp_path / "checkpoint-0.pth", map_location="cpu", weights_only=True)
    assert state["nonfinite_skipped"] == 1


def _torchrun(argv_driver, fault, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), LAUNCHER,
            fault, *argv_driver]


def test_nan_on_rank1_at_a_step_that_is_not_logged_names_the_step_and_the_rank(data, tmp_path):
    # Default --log_every: the NaN reaches rank 0's weights through DDP's all-reduce; the message
    # still names the first step and rank 1 as the cause, on both ranks.
    argv = [os.path.join(ROOT, "run_sigma_pretraining.py"),
            *_pretrain_argv(data, tmp_path, "--batch_size", "1", "--num_workers", "1", "--log_every", "20",
                            "--epochs", "1")]
    code, output, seconds = _run(_torchrun(argv, "nan_at:2@1"), timeout=DEADLINE_S)
    assert code != 0, output[-3000:]
    errors = [line for line in output.splitlines() if "run failed:" in line]
    assert len(errors) == 2, output[-3000:]
    for line in errors:
        assert "non-finite loss at step 1 (epoch 0) on rank(s) [1]" in line, line
    last = open(tmp_path / "train.log").read().strip().splitlines()[-1]
    assert "run failed: non-finite loss at step 1 (epoch 0) on rank(s) [1]" in last, last
    assert not [f for f in os.listdir(tmp_path) if f.startswith("checkpoint-")]
    assert seconds < DEADLINE_S


def test_unreadable_share_of_rank1_names_the_rank_and_files_on_every_rank(data, tmp_path):
    argv = [os.path.join(ROOT, "run_sigma_pretraining.py"),
            *_pretrain_argv(data, tmp_path, "--batch_size", "1", "--num_workers", "1", "--epochs", "1")]
    code, output, _ = _run(_torchrun(argv, "unreadable_on_rank:1"), timeout=DEADLINE_S)
    assert code != 0, output[-3000:]
    errors = [line for line in output.splitlines() if "run failed:" in line]
    assert len(errors) == 2, output[-3000:]
    for line in errors:
        assert "on rank 1: " in line and "more than --max_bad_fraction" in line and ".mp4 (injected" in line, line
        assert "on rank 0" not in line, line
    last = open(tmp_path / "train.log").read().strip().splitlines()[-1]
    assert "run failed: on rank 1: " in last, last


def test_a_second_run_into_a_held_folder_refuses_and_a_stale_lock_is_taken_over(data, tmp_path):
    argv = _pretrain_argv(data, tmp_path, "--num_workers", "1", "--save_ckpt_steps", "1")
    first = subprocess.Popen(_driver("run_sigma_pretraining.py", argv, "slow_save:3"), cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + DEADLINE_S
        while time.time() < deadline and not (tmp_path / "save_started").exists():
            time.sleep(0.1)
        holder = json.loads((tmp_path / "run.lock").read_text())
        assert holder["pid"] == first.pid
        code, output, _ = _run(_driver("run_sigma_pretraining.py", argv))
        assert code == 1, output[-3000:]
        line = output.strip().splitlines()[-1]  # before logging to a file starts: the holder's train.log is not touched
        assert "run failed: " in line and "in use by another run" not in (tmp_path / "train.log").read_text(), line
        assert f"{tmp_path} is in use by another run: pid {first.pid} on host {holder['host']}" in line, line
        output, _ = first.communicate(timeout=DEADLINE_S)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, output[-3000:]  # the refused run touched nothing of it
    assert _losses(tmp_path) == list(range(1, 13)) and not (tmp_path / "run.lock").exists()
    # A lock left by a process that is gone (kill -9) is taken over with a warning.
    stale = tmp_path / "stale"
    stale.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale / "run.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid}))
    code, output, _ = _run(_driver("run_sigma_pretraining.py", _pretrain_argv(data, stale, "--epochs", "1")))
    assert code == 0, output[-3000:]
    assert f"taking over the stale run lock {stale / 'run.lock'} of pid {dead.pid}" in output


def test_knn_monitor_list_unreadable_stops_at_start(data, tmp_path):
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    for split in ("train", "val"):
        (monitor / f"{split}.csv").write_text("".join(f"{data}/broken{i}.mp4 {i % 4}\n" for i in range(4)))
    argv = _pretrain_argv(data, tmp_path / "out", "--eval_every", "1", "--eval_data_path", str(monitor))
    code, output, seconds = _run(_driver("run_sigma_pretraining.py", argv))
    assert code == 1, output[-3000:]
    assert "none of the 4 videos probed opens" in output.strip().splitlines()[-1], output[-2000:]
    assert not os.path.exists(tmp_path / "out" / "metrics.jsonl")  # nothing trained


def test_knn_monitor_failure_is_skipped_after_the_checkpoint(data, tmp_path):
    argv = _pretrain_argv(data, tmp_path, "--num_workers", "1", "--epochs", "2", "--eval_every", "1",
                          "--eval_data_path", data, "--eval_k", "2")
    code, output, _ = _run(_driver("run_sigma_pretraining.py", argv, "monitor_fails:3"))
    assert code == 0, output[-3000:]
    assert "kNN monitor failed on rank(s) [0] and was skipped (training goes on): RuntimeError: injected" in output
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in records if "knn_top1" in r] == [0]  # epoch 1's monitor (calls 3, 4) failed
    assert {"checkpoint-0.pth", "checkpoint-1.pth"} <= set(os.listdir(tmp_path))


def test_multinode_launcher_with_a_bad_master_addr_stops_in_seconds(tmp_path):
    env = {**os.environ, "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "no-such-host.invalid",
           "MASTER_PORT": "29500", "SIGMA_DEVICE": "cpu", "OUTPUT_ROOT": str(tmp_path), "SSV2_ROOT": str(tmp_path)}
    code, output, seconds = _run(["bash", os.path.join(ROOT, "scripts", "pretrain", "videomae_vits_ssv2.sh")],
                                 timeout=60, env=env)
    assert code == 2, output
    assert "node 1: MASTER_ADDR 'no-such-host.invalid' does not resolve" in output, output
    assert "torch.distributed.run" not in output and "gai error" not in output


def test_fresh_start_moves_the_dead_attempts_logs_aside(data, tmp_path):
    argv = _pretrain_argv(data, tmp_path, "--save_ckpt_freq", "100", "--epochs", "2")
    code, output, _ = _run(_driver("run_sigma_pretraining.py", argv, "kill_after_step:2"))
    assert code == -signal.SIGKILL, output[-2000:]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("checkpoint-")]
    run.main(run.get_args(argv))
    assert _losses(tmp_path) == list(range(1, 9))
    aside = [json.loads(line)["step"] for line in open(tmp_path / "metrics.attempt-1.jsonl")]
    assert aside == [1, 2]
    assert os.path.isdir(tmp_path / "tb.attempt-1") and os.path.isdir(tmp_path / "tb")


def test_resume_with_another_batch_size_keeps_the_logs_and_lists_changed_flags(data, tmp_path, caplog):
    run.main(run.get_args(_pretrain_argv(data, tmp_path, "--epochs", "1")))  # 4 steps of 2 clips
    assert _losses(tmp_path) == [1, 2, 3, 4]
    run.main(run.get_args(_pretrain_argv(data, tmp_path, "--epochs", "2", "--batch_size", "1", "--lr", "0.1")))
    assert _losses(tmp_path) == list(range(1, 13))  # epoch 1's 8 steps numbered after epoch 0's 4
    warnings = [r.getMessage() for r in caplog.records if "differ from its run" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for change in ("batch_size: 2 -> 1", "lr: 0.05 -> 0.1", "epochs: 1 -> 2"):
        assert change in warnings[0], warnings[0]
    assert [e["epoch"] for e in _epochs(tmp_path)] == [0, 1]
