"""Faults of the I/O around training (RELIABILITY.md, "Transcodes, exports, evaluations"), each driven
through its real entry point: `python -m datasets.prepare transcode` killed (SIGKILL, SIGTERM, at
each stage), two transcodes at once, corrupt outputs; `hf_weights.py export` killed at each stage,
into folders it must refuse, read back against a config or side file of other weights; the
evaluation drivers (kNN with DataLoader workers, probe, the pretraining kNN monitor, segmentation)
on lists with unreadable files. Every process runs under a timeout.
"""
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import hf_weights
import modeling_finetune as mf
from datasets import transcode
from datasets.synthetic import make_dataset
from helpers import FRAMES, SIZE, tiny_pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FFMPEG = transcode.find_ffmpeg()
TIMEOUT_S = 120


def _python(code_or_args, *, env=None, timeout=TIMEOUT_S, wait=True):
    """A Python process in the repo root (`-c CODE` for a string), killed at `timeout`."""
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"still running after {timeout}s (hang):\n{out[-3000:]}")
    return proc.returncode, out


def _last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


# ------------------------------------------------------------------------------------- transcode

def _children(pid: int):
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped
    except OSError:
        return False


def _decoded_frames(path: str) -> int:
    """Frames a full decode of `path` gives (ffmpeg, every frame once), -1 when it fails."""
    proc = subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", path, "-map", "0:v:0", "-fps_mode", "passthrough",
                           "-f", "null", "-progress", "pipe:1", "-"], capture_output=True, text=True, timeout=60)
    frames = [int(line[6:]) for line in proc.stdout.splitlines() if line.startswith("frame=")]
    return frames[-1] if proc.returncode == 0 and frames else -1


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Videos as downloads come: MPEG-4 Part 2 AVI with B-frames (XVID tag) and H.264 MP4, made by
    Debian's ffmpeg; 6 s each (150 frames)."""
    src = tmp_path_factory.mktemp("raw")
    os.makedirs(src / "a")
    specs = {"a/xvid.avi": ["-c:v", "mpeg4", "-bf", "2", "-vtag", "XVID"],
             "a/h264.mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p"],
             "b.avi": ["-c:v", "mpeg4", "-bf", "2", "-vtag", "XVID"]}
    for name, codec in specs.items():
        subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "6",
                        *codec, str(src / name)], check=True, timeout=60)
    frames = {name: _decoded_frames(str(src / name)) for name in specs}
    assert set(frames.values()) == {150}
    return src


@pytest.fixture
def slow_ffmpeg(tmp_path):
    """PATH with an `ffmpeg` that encodes in real time (`-re`: 6 s per source, hardly any CPU), so a kill
    surely lands while the encoders run; every other ffmpeg call is the real one, unchanged."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *libx264*) exec {FFMPEG} -re "$@";; esac\nexec {FFMPEG} "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _transcode_cmd(src, dst, *extra):
    return ["-m", "datasets.prepare", "transcode", "--src", str(src), "--dst", str(dst), "--gop", "8",
            "--workers", "2", *extra]


def _partials(dst):
    return [os.path.join(d, n) for d, _, names in os.walk(dst) for n in names if n.endswith(transcode.PARTIAL)]


def _wait_for(condition, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _assert_complete(src, dst):
    """Every source has its output, each decoding to all 150 frames; no partial file is left."""
    assert _partials(dst) == []
    for name in ("a/xvid.mp4", "a/h264.mp4", "b.mp4"):
        assert _decoded_frames(str(dst / name)) == 150, name


def _start_and_wait_for_encoders(src, dst, env):
    proc = _python(_transcode_cmd(src, dst), env=env, wait=False)
    assert _wait_for(lambda: len(_partials(dst)) == 2 and all(os.path.getsize(p) > 0 for p in _partials(dst))), \
        "no partial file appeared"
    encoders = [c for c in _children(proc.pid)]
    assert len(encoders) == 2  # the two --workers' ffmpeg, children of the run
    return proc, encoders


@pytest.mark.slow
def test_transcode_killed_with_sigkill_leaves_no_ffmpeg_and_a_rerun_finishes(sources, tmp_path, slow_ffmpeg):
    dst = tmp_path / "dst"
    proc, encoders = _start_and_wait_for_encoders(sources, dst, slow_ffmpeg)
    proc.kill()  # kill -9: no handler runs; the children die with their parent (PR_SET_PDEATHSIG)
    proc.communicate(timeout=30)
    assert _wait_for(lambda: not any(_alive(p) for p in encoders), timeout=10), "ffmpeg outlived its killed parent"
    assert len(_partials(dst)) == 2  # left by the dead run: no other run uses these names
    code, out = _python(_transcode_cmd(sources, dst))  # the re-run DATASET.md says to do, at once
    assert code == 0, out
    assert "removed 2 partial files left by killed runs" in out and "failed 0" in out
    _assert_complete(sources, dst)
    # and the run after it finds everything verified
    code, out = _python(_transcode_cmd(sources, dst))
    assert code == 0 and "transcoded 0, skipped 3 (verified), failed 0" in out, out


@pytest.mark.slow
def test_transcode_sigterm_ends_every_ffmpeg_and_removes_the_partials(sources, tmp_path, slow_ffmpeg):
    dst = tmp_path / "dst"
    proc, encoders = _start_and_wait_for_encoders(sources, dst, slow_ffmpeg)
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and time.time() - start < 10, out
    assert "transcode stopped (SIGTERM): 2 ffmpeg ended" in _last_line(out)
    assert not any(_alive(p) for p in encoders) and _partials(dst) == []
    code, out = _python(_transcode_cmd(sources, dst))
    assert code == 0, out
    _assert_complete(sources, dst)


@pytest.mark.slow
def test_a_child_dies_with_its_killed_parent_even_when_it_writes_nothing():
    """ffmpeg also ends on its closed progress pipe; PR_SET_PDEATHSIG ends any child, silent ones too."""
    proc = _python("import datasets.transcode as t\nt._run(['sleep', '60'])", wait=False)
    assert _wait_for(lambda: len(_children(proc.pid)) == 1)
    child = _children(proc.pid)[0]
    proc.kill()
    proc.communicate(timeout=30)
    assert _wait_for(lambda: not _alive(child), timeout=10), "the child outlived its killed parent"


KILL_AT = {
    # after ffmpeg wrote the partial, before it is verified
    "verify": "real = t._verify_output\n"
              "def hook(*a, **k):\n    kill()\nt._verify_output = hook\n",
    # after the verified output was renamed into place, before the manifest records it
    "record": "real = t._Manifest.add\n"
              "def hook(self, dst, frames):\n    kill()\nt._Manifest.add = hook\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(KILL_AT))
def test_transcode_killed_at_each_stage_is_finished_by_a_rerun(sources, tmp_path, stage):
    dst = tmp_path / "dst"
    code = ("import os, signal, sys\nimport datasets.transcode as t\n"
            "def kill():\n    os.kill(os.getpid(), signal.SIGKILL)\n" + KILL_AT[stage]
            + f"from datasets.prepare import main\nsys.exit(main({_transcode_cmd(sources, dst)[2:]!r}))\n")
    rc, out = _python(code)
    assert rc == -signal.SIGKILL, out
    rc, out = _python(_transcode_cmd(sources, dst))
    assert rc == 0 and "failed 0" in out, out
    _assert_complete(sources, dst)
    if stage == "record":  # an output renamed but never recorded is verified against its source, not redone
        assert "skipped 1 (verified)" in out or "skipped 2 (verified)" in out, out


@pytest.mark.slow
def test_transcode_never_takes_a_corrupt_output_for_done(sources, tmp_path):
    dst = tmp_path / "dst"
    assert _python(_transcode_cmd(sources, dst))[0] == 0
    (dst / "b.mp4").write_bytes(b"")  # 0 frames under the final name (changed since it was verified)
    with open(dst / "a" / "xvid.mp4", "r+b") as f:  # a torn tail: an output with frames missing
        f.truncate(os.path.getsize(dst / "a" / "xvid.mp4") // 2)
    os.remove(dst / transcode.MANIFEST)  # as an earlier version left its outputs: nothing recorded
    code, out = _python(_transcode_cmd(sources, dst))
    assert code == 0, out
    assert "b.mp4: output not verified" in out and "xvid.mp4: output not verified" in out
    assert "transcoded 2, skipped 1 (verified), failed 0" in out
    _assert_complete(sources, dst)


@pytest.mark.slow
def test_two_transcodes_at_once_on_one_tree(sources, tmp_path):
    dst = tmp_path / "dst"
    runs = [_python(_transcode_cmd(sources, dst, "--workers", "1"), wait=False) for _ in range(2)]
    for proc in runs:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, out
    _assert_complete(sources, dst)


# --------------------------------------------------------------------------------------- exports

def _vit(**kwargs):
    cfg = dict(img_size=SIZE, patch_size=16, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
               all_frames=FRAMES)
    return mf.VisionTransformer(**{**cfg, **kwargs}).eval()


def _save(path, net, **config):
    torch.save({"model": net.state_dict(), "epoch": 1, "step": 1,
                "config": {"input_size": SIZE, "num_frames": FRAMES, **config}}, path)
    return str(path)


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    pretrain = _save(tmp_path / "pretrain.pth", tiny_pretrain(), model="pretrain_videomae_tiny_patch16_224")
    finetuned = _save(tmp_path / "ft.pth", _vit())
    return {"pretrain": pretrain, "finetuned": finetuned}


def _export_killed(ckpt, out, hook):
    """`hf_weights.py export --overwrite` in its own process, SIGKILLed by `hook` at one stage."""
    code = (f"import os, signal, sys\nimport hf_weights\n{hook}"
            f"hf_weights.main(['export', {ckpt!r}, {str(out)!r}, '--num_heads', '2', '--overwrite'])\n")
    return _python(code)


def _export(ckpt, out, *extra, caplog=None):
    """hf_weights.py's main in this process: (exit status, its last log line)."""
    if caplog is not None:
        caplog.clear()
    try:
        hf_weights.main(["export", ckpt, str(out), "--num_heads", "2", *extra])
    except SystemExit as e:
        return e.code, caplog.records[-1].getMessage() if caplog is not None else ""
    return 0, ""


def _tree(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@pytest.mark.e2e
def test_export_into_a_folder_of_an_older_export_replaces_it_whole(checkpoints, tmp_path, caplog):
    out = tmp_path / "hf"
    assert _export(checkpoints["pretrain"], out)[0] == 0
    assert hf_weights.EXTRAS_NAME in os.listdir(out)
    code, last = _export(checkpoints["finetuned"], out, caplog=caplog)
    assert code == 1 and "is not empty" in last and "--overwrite" in last
    assert _export(checkpoints["finetuned"], out, "--overwrite")[0] == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]  # the old side file is gone
    state, _ = hf_weights.read_checkpoint(str(out))
    assert "head.weight" in state and not any(k.startswith("prototypes") for k in state)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".hf.")]  # no temp folder left


@pytest.mark.e2e
def test_export_into_a_run_folder_or_a_foreign_folder_is_refused(checkpoints, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint-latest.pth", "log.txt"):
        (run / name).write_text("{}")
    before = _tree(run)
    code, last = _export(checkpoints["finetuned"], run, "--overwrite", caplog=caplog)
    assert code == 1 and "is a training run's folder" in last
    assert _tree(run) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, last = _export(checkpoints["finetuned"], other, "--overwrite", caplog=caplog)
    assert code == 1 and "notes.txt" in last and (other / "notes.txt").read_text() == "mine"


# Each hook SIGKILLs the export at one stage: after config.json, after model.safetensors, after the side
# file, and between moving the old export aside and renaming the new one into place.
EXPORT_KILLS = {
    "after_config": "real = hf_weights.write_safetensors\n"
                    "def hook(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                    "hf_weights.write_safetensors = hook\n",
    "after_model": "real, n = hf_weights.write_safetensors, []\n"
                   "def hook(*a, **k):\n    real(*a, **k); n.append(1)\n"
                   "    if len(n) == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
                   "hf_weights.write_safetensors = hook\n",
    "after_extras": "real = hf_weights.share\n"
                    "def hook(path):\n    real(path)\n"
                    "    if os.path.isdir(path): os.kill(os.getpid(), signal.SIGKILL)\n"
                    "hf_weights.share = hook\n",
    "between_renames": "real = os.replace\n"
                       "def hook(a, b):\n    if os.path.basename(b) == 'hf': os.kill(os.getpid(), signal.SIGKILL)\n"
                       "    real(a, b)\n"
                       "os.replace = hook\n",
}


@pytest.mark.e2e
@pytest.mark.parametrize("stage, earlier", [(stage, True) for stage in sorted(EXPORT_KILLS)]
                         + [("after_model", False)])
def test_export_killed_at_each_stage_leaves_the_old_export_or_none(checkpoints, tmp_path, stage, earlier):
    out = tmp_path / "hf"
    if earlier:
        assert _export(checkpoints["finetuned"], out)[0] == 0
    before = _tree(out) if earlier else None
    code, output = _export_killed(checkpoints["pretrain"], out, EXPORT_KILLS[stage])
    assert code == -signal.SIGKILL, output
    if os.path.exists(out):  # the whole earlier export, never a mix
        assert _tree(out) == before
        state, _ = hf_weights.read_checkpoint(str(out))
        assert "head.weight" in state
    else:  # none: a new export, or killed in the moment between the two renames
        assert stage == "between_renames" or not earlier
    assert _export(checkpoints["pretrain"], out, "--overwrite")[0] == 0  # the re-export
    state, _ = hf_weights.read_checkpoint(str(out))
    assert any(k.startswith("prototypes") for k in state) and "head.weight" not in state
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".hf.")]  # stale temp folders removed


@pytest.mark.e2e
def test_reading_checks_config_and_side_file_against_the_weights(checkpoints, tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _export(checkpoints["pretrain"], a)[0] == 0
    torch.manual_seed(1)
    assert _export(_save(tmp_path / "other.pth", tiny_pretrain(), model="pretrain_videomae_tiny_patch16_224"),
                   b)[0] == 0
    os.replace(b / hf_weights.EXTRAS_NAME, a / hf_weights.EXTRAS_NAME)  # a side file of other weights
    with pytest.raises(ValueError, match=r"sigma_extras.safetensors belongs to other weights"):
        hf_weights.read_checkpoint(str(a))
    config = json.loads((b / "config.json").read_text())
    config.update(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096)  # ViT-L beside ViT-Ti
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as stop:
        hf_weights.main(["convert", str(b), str(tmp_path / "x.pth")])
    assert stop.value.code == 1 and not os.path.exists(tmp_path / "x.pth")
    assert "config.json does not describe its weights: hidden_size=1024 but the tensors have embed_dim 32" \
        in caplog.records[-1].getMessage()


@pytest.mark.e2e
def test_exported_and_converted_files_follow_the_umask(checkpoints, tmp_path):
    old = os.umask(0o022)
    try:
        hf_weights.main(["export", checkpoints["pretrain"], str(tmp_path / "hf"), "--num_heads", "2"])
        hf_weights.main(["convert", str(tmp_path / "hf"), str(tmp_path / "w.safetensors")])
        hf_weights.main(["convert", str(tmp_path / "hf"), str(tmp_path / "w.pth")])
    finally:
        os.umask(old)
    files = [tmp_path / "hf" / n for n in os.listdir(tmp_path / "hf")] + [tmp_path / "w.safetensors",
                                                                         tmp_path / "w.pth"]
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in files} == {0o644}
    assert stat.S_IMODE(os.stat(tmp_path / "hf").st_mode) == 0o755


# ----------------------------------------------------------------------------------- evaluations

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """8 train and 8 val videos; val_bad.csv lists the val videos with 6 of them unreadable."""
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=8, num_test=0, frames=16, height=48, width=64, seed=0)
    bad = root / "bad"
    bad.mkdir()
    lines = (root / "val.csv").read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        path, label = line.rsplit(" ", 1)
        if i < 6:
            broken = bad / f"broken{i}.mp4"
            data = open(os.path.join(root, path), "rb").read()
            broken.write_bytes(data[:len(data) // 8] if i % 2 else b"not a video at all")
            path = os.path.relpath(broken, root)
        out.append(f"{path} {label}")
    bad_list = root / "badlist"
    bad_list.mkdir()
    (bad_list / "train.csv").write_text((root / "train.csv").read_text())
    (bad_list / "val.csv").write_text("\n".join(out) + "\n")
    return root


def _knn_argv(videos, data_path, out, *extra):
    return ["-m", "evals.knn", "--model", "vit_tiny_patch16_224", "--random_init", "--data_set", "custom",
            "--nb_classes", "4", "--data_path", str(data_path), "--data_root", str(videos), "--input_size", "32",
            "--short_side_size", "32", "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2",
            "--num_workers", "2", "--device", "cpu", "--output_dir", str(out), *extra]


@pytest.mark.e2e
def test_knn_with_unreadable_queries_fails_naming_them_or_reports_what_it_scored(videos, tmp_path):
    code, out = _python(_knn_argv(videos, videos / "badlist", tmp_path / "a"))
    last = _last_line(out)
    assert code == 1 and "val (queries): scored 2 of 8 listed videos, left out 6" in last, out[-3000:]
    assert "broken0.mp4" in last and "more than --max_bad_fraction 0.01" in last
    assert not os.path.exists(tmp_path / "a" / "knn_results.json")
    code, out = _python(_knn_argv(videos, videos / "badlist", tmp_path / "b", "--max_bad_fraction", "1"))
    assert code == 0, out[-3000:]
    results = json.loads((tmp_path / "b" / "knn_results.json").read_text())
    assert results["scored"]["val"] == {"listed": 8, "scored": 2} and results["num_val"] == 2
    assert results["k_used"] == {"20": 8}  # k=20 asked, a bank of 8: said, not hidden
    assert "k=20 asked, but the bank holds 8 videos: k=8 used" in out


@pytest.mark.e2e
def test_probe_names_unreadable_videos(videos, tmp_path):
    argv = ["-m", "evals.probe", "--model", "vit_tiny_patch16_224", "--random_init", "--data_path",
            str(videos / "badlist"), "--data_root", str(videos), "--input_size", "32", "--short_side_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--num_workers", "1", "--device", "cpu",
            "--cv_folds", "2", "--output_dir", str(tmp_path / "p")]
    code, out = _python(argv)
    assert code == 1 and "scored 2 of 8 listed videos, left out 6" in _last_line(out), out[-3000:]


def test_knn_monitor_says_what_it_scored(videos, caplog):
    from datasets.video_dataset import ClipConfig
    from distributed import DistEnv
    from evals.knn_monitor import KnnMonitor
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    monitor = KnnMonitor(str(videos / "badlist"), data_root=str(videos), nb_classes=4,
                         clip=ClipConfig(num_frames=4, sampling_rate=2, input_size=32, short_side_size=32), k=20,
                         temperature=0.07, batch_size=2, num_workers=2, video_backend="pyav", env=env)
    encoder = mf.MODELS["vit_tiny_patch16_224"](img_size=32, all_frames=4, num_classes=0)
    # Above the threshold the epoch's score is skipped (the monitor never stops a run), naming the files.
    caplog.set_level(logging.WARNING, logger="sigma")
    assert monitor.score(encoder, "fp32") is None
    assert re.search(r"skipped this epoch.*kNN monitor val.csv: scored 2 of 8 listed videos.*broken", caplog.text)
    monitor.max_bad_fraction = 1.0
    record = monitor.score(encoder, "fp32")
    assert record["knn_queries"] == 2 and record["knn_bank"] == 8 and record["knn_k"] == 8


def _davis(tmp_path):
    from datasets.synthetic_vos import make_vos_dataset
    root = tmp_path / "davis"
    make_vos_dataset(str(root), "davis", num_videos=3, frames=4, height=32, width=48, seed=0)
    return root


def _seg(root, out, *extra):
    return _python(["-m", "evals.segmentation", "--data_set", "davis", "--data_path", str(root), "--model",
                    "vit_tiny_patch16_224", "--random_init", "--input_size", "32", "--num_frames", "4",
                    "--workers", "0", "--kmeans_restarts", "1", "--output_dir", str(out), "--device", "cpu", *extra])


@pytest.mark.e2e
def test_segmentation_refuses_masks_of_another_size(tmp_path):
    root = _davis(tmp_path)
    mask_path = root / "Annotations" / "480p" / "video001" / "00002.png"
    with Image.open(mask_path) as mask:
        smaller = mask.resize((24, 16), Image.Resampling.NEAREST)
        smaller.putpalette(mask.getpalette())
    smaller.save(mask_path)
    code, out = _seg(root, tmp_path / "out")
    assert code == 1, out[-3000:]
    assert "00002.png is 24x16, its frame" in _last_line(out) and "48x32" in _last_line(out)


@pytest.mark.e2e
def test_segmentation_names_a_truncated_frame_and_leaves_its_video_out(tmp_path):
    root = _davis(tmp_path)
    frame = root / "JPEGImages" / "480p" / "video002" / "00001.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    code, out = _seg(root, tmp_path / "a")
    assert code == 1 and "video002" in _last_line(out) and "00001.jpg cannot be read" in _last_line(out)
    code, out = _seg(root, tmp_path / "b", "--max_bad_fraction", "0.5")
    assert code == 0, out[-3000:]
    results = json.loads((tmp_path / "b" / "segmentation_results.json").read_text())
    assert results["listed"] == 3 and results["left_out"] == ["video002"]
    assert results["clustering"]["num_clips"] == 2


def test_void_pixels_are_not_scored():
    from datasets.vos import VOID
    from evals.segmentation_metrics import score_labels
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, size=(2, 16, 16)).astype(np.uint8)
    clusters = rng.integers(0, 3, size=gt.shape).astype(np.uint8)
    with_void = gt.copy()
    with_void[:, :4] = VOID
    void_scored = score_labels(with_void, clusters, 3, "hungarian")
    assert VOID not in void_scored["iou"]
    # the same as scoring only the non-void pixels
    keep = with_void != VOID
    alone = score_labels(gt[keep].reshape(1, 1, -1), clusters[keep].reshape(1, 1, -1), 3, "hungarian")
    assert void_scored["miou"] == pytest.approx(alone["miou"])
    assert (void_scored["prediction"][:, :4] == VOID).all()
