"""--gpu_augment: the device augmentation gives the worker path's clips and masks, on real encoded
videos of different sizes in one batch, through a DataLoader worker; the driver resumes it exactly;
unsupported uses fail clearly."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import run_class_finetuning
import run_sigma_pretraining as run
from datasets.annotations import read_annotations
from datasets import gpu_augment
from datasets.gpu_augment import DeviceAugment, augment_batch
from datasets.synthetic import make_dataset
from datasets.video_dataset import AugmentConfig, ClipConfig, MaskConfig, VideoClipDataset, collate_clips
from tests.helpers import FRAMES, GRID, SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = ClipConfig(num_frames=FRAMES, sampling_rate=2, input_size=SIZE)
MASK = MaskConfig(mask_type="tube", mask_ratio=0.5, grid=GRID)
# (height, width) of the three kinds of video: wide, tall and square; one of each per batch of 3.
FRAME_SIZES = [(48, 64), (64, 48), (40, 40)]


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Two videos of each size in FRAME_SIZES, interleaved: every batch of 3 mixes the sizes."""
    root = tmp_path_factory.mktemp("mixed")
    per_size = []
    for h, w in FRAME_SIZES:
        folder = root / f"{h}x{w}"
        make_dataset(str(folder), num_train=2, num_val=0, num_test=0, frames=12, height=h, width=w, seed=h + w)
        per_size.append(read_annotations(str(folder / "pretrain.csv"), str(folder), with_labels=False))
    return [s for group in zip(*per_size) for s in group]


def _batches(samples, augmentation: str, gpu_augment: bool, epochs=(0, 1)):
    """Every batch of `epochs` through a persistent DataLoader worker, 2 views per item."""
    ds = VideoClipDataset(samples, "pretrain", CLIP, AugmentConfig(pretrain_augmentation=augmentation), MASK,
                          num_sample=2, seed=3, gpu_augment=gpu_augment)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, persistent_workers=True,
                                         collate_fn=collate_clips)
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out += list(loader)
    return out


@pytest.mark.parametrize("augmentation", ["multi_scale_crop", "resize"])
def test_device_augment_gives_the_worker_paths_batches(mixed_sizes, augmentation, monkeypatch):
    expected = _batches(mixed_sizes, augmentation, gpu_augment=False)
    raw = _batches(mixed_sizes, augmentation, gpu_augment=True)
    # One pinned-size uint8 tensor per batch, padded to its largest frame: the sizes really differ.
    assert raw[0]["frames"].dtype == torch.uint8 and raw[0]["frames"].shape == (3, FRAMES, 64, 64, 3)
    assert sorted(map(tuple, raw[0]["frame_size"].tolist())) == sorted(FRAME_SIZES)
    assert raw[0]["frame_index"].tolist() == [0, 0, 1, 1, 2, 2]
    got = list(DeviceAugment(raw, torch.device("cpu"), SIZE))
    assert len(got) == len(expected) == 4  # 2 batches x 2 epochs
    for b, (want, have) in enumerate(zip(expected, got)):
        assert sorted(have) == sorted(want), b
        assert have["video"].shape == (6, 3, FRAMES, SIZE, SIZE) and have["video"].dtype == torch.float32
        assert torch.equal(have["video"], want["video"]), f"batch {b}: video differs"
        for key in ("mask", "label", "index", "segment", "crop"):
            assert torch.equal(have[key], want[key]), f"batch {b}: {key} differs"
    assert not torch.equal(got[0]["video"], got[2]["video"])  # epoch 1 draws other clips
    monkeypatch.setattr(gpu_augment, "MAX_RESIZE_ELEMENTS", 1)  # one resize call per view
    assert torch.equal(augment_batch(raw[0], torch.device("cpu"), SIZE)["video"], expected[0]["video"])
    if augmentation == "multi_scale_crop":  # two views of one decode, two crops
        assert not torch.equal(got[0]["video"][0], got[0]["video"][1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_augmentation_within_one_uint8_level(mixed_sizes):
    raw = _batches(mixed_sizes, "multi_scale_crop", gpu_augment=True, epochs=(0,))
    for batch in raw:
        cpu = augment_batch(batch, torch.device("cpu"), SIZE)["video"]
        cuda = augment_batch(batch, torch.device("cuda"), SIZE)["video"].cpu()
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
        levels = ((cuda - cpu) * std * 255).abs()  # back to uint8 levels
        assert levels.max() <= 1 + 1e-3, levels.max()


def test_unsupported_uses_fail_clearly(mixed_sizes, capsys):
    with pytest.raises(ValueError, match="pretraining only"):
        VideoClipDataset(mixed_sizes, "train", CLIP, gpu_augment=True)
    with pytest.raises(SystemExit):
        run_class_finetuning.get_args(["--data_path", "x", "--gpu_augment"])
    assert "--gpu_augment: pretraining only" in capsys.readouterr().err
    worker_path = collate_clips([VideoClipDataset(mixed_sizes, "pretrain", CLIP, mask=MASK)[0]])
    with pytest.raises(KeyError, match="gpu_augment=True"):
        augment_batch(worker_path, torch.device("cpu"), SIZE)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=1, num_test=1, frames=16, height=48, width=64, seed=0)
    return str(root)


def _argv(data, out, *extra):
    return ["--data_path", data, "--data_path_csv", os.path.join(data, "pretrain.csv"), "--input_size", str(SIZE),
            "--num_frames", str(FRAMES), "--sampling_rate", "2", "--batch_size", "4", "--num_sample", "2",
            "--epochs", "3", "--warmup_epochs", "1", "--num_prototypes", "16", "--decoder_depth", "1",
            "--num_workers", "1", "--lr", "0.05", "--log_every", "1", "--save_ckpt_freq", "1",
            "--output_dir", str(out), *extra]


def _losses(out):
    """Per-step losses, the last record of each step winning (steps re-run after a kill)."""
    steps = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        record = json.loads(line)
        steps[record["step"]] = record["loss"]
    return steps


@pytest.mark.e2e
def test_gpu_augment_run_killed_and_resumed_gives_the_worker_paths_losses(data, tmp_path):
    """The worker path uninterrupted, and --gpu_augment hard-killed after step 4 and resumed, both
    through a persistent DataLoader worker: the same loss at every step."""
    reference = tmp_path / "reference"
    run.main(run.get_args(_argv(data, reference)))
    expected = _losses(reference)
    killed = tmp_path / "killed"
    argv = _argv(data, killed, "--gpu_augment", "--save_ckpt_steps", "3")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_sigma_pretraining.py"), *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not (killed / "metrics.jsonl").exists() or max(_losses(killed), default=0) < 4):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 4 <= max(_losses(killed)) < 12, "the run was not killed between step 4 and its end"
    run.main(run.get_args(argv))
    resumed = _losses(killed)
    assert sorted(resumed) == sorted(expected) == list(range(1, 13))
    for step, loss in expected.items():
        assert abs(resumed[step] - loss) < 1e-6, f"step {step}: {resumed[step]} vs {loss}"


def _collate_and_report_sharing(batch):
    out = collate_clips(batch)
    return {k: (v, v.is_shared()) for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("gpu_augment", [False, True])
def test_worker_batches_are_built_in_shared_memory(mixed_sizes, gpu_augment):
    """Collated in a worker, every tensor is born in shared memory (pickling a private one copies it
    there first); in the main process the same batch is private, and the values are the same."""
    ds = VideoClipDataset(mixed_sizes[:3], "pretrain", CLIP, mask=MASK, num_sample=2, seed=3, gpu_augment=gpu_augment)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=_collate_and_report_sharing)
    in_worker = next(iter(loader))
    small = {"frame_size", "frame_index"}  # a few bytes each: copied, not worth an allocation of their own
    assert {k for k, (_, shared) in in_worker.items() if not shared} <= small
    assert len(set(in_worker) - small) >= 4 and ("frames" in in_worker) is gpu_augment
    in_main = collate_clips([ds[i] for i in range(3)])
    for k, (value, _) in in_worker.items():
        assert not in_main[k].is_shared() and torch.equal(value, in_main[k]), k
