"""Does the data path feed a GPU? The real pretraining DataLoader, N workers, measured per core.

Each variant runs the DataLoader a training run uses (persistent workers of one thread each,
`collate_clips`, pinned batches when the device is CUDA) over the same files and clips:
- `ours`: the pretraining dataset as `run_sigma_pretraining.py` builds it (augmentation in the workers);
- `ours_gpu_augment`: the same with `--gpu_augment`: workers decode and return uint8 frames, the
  crops, resize and normalisation run batched on `--device` in this process;
- `official`: the official VideoMAE/SIGMA pretraining path on the same frame indices: decord
  (`VideoReader(num_threads=1)`, `get_batch`), per-frame PIL RGB images, GroupMultiScaleCrop, Stack,
  ToTorchFormatTensor, GroupNormalize, numpy tube mask, default collate.
Variants alternate round by round; each round starts fresh workers, skips `--warmup` batches
(worker start, imports; at least one per worker) and times `--batches` batches. Per-core cost is CPU
time per clip: each worker stamps every batch it collates with its process CPU time (all its threads),
so a worker's cost is the difference between the stamps of its last warm-up and its last timed batch,
over the clips it made in between; this process's CPU time is reported beside it. On a machine shared
with other jobs CPU time is the steadier figure; wall-clock clips/s is printed too.

The node arithmetic: a GPU that trains G clips/s needs G / r worker cores at r clips per core-second,
so a node with C cores per GPU (one of them for the training process, C - 1 workers) keeps a fraction
f = (C - 1) r / G of each GPU busy (f >= 1: the data path keeps up). G defaults to the issue's ViT-B
SIGMA-MLP estimate for an H100 at 40% MFU (1650 clips/s); `--step_time` and `--step_batch` give it
from a measured step instead. One JSON line per variant and round, then one summary line per variant.

    python -m datasets.synthetic --num_train 20 --frames 300 --height 240 --width 320 --out /tmp/v
    python bench/bench_loader.py --csv /tmp/v/pretrain.csv --data_path /tmp/v --num_workers 1 2
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.annotations import read_annotations  # noqa: E402
from datasets.decoding import BACKENDS, DEFAULT_BACKEND  # noqa: E402
from datasets.frame_indices import dense_indices  # noqa: E402
from datasets.gpu_augment import augment_batch  # noqa: E402
from datasets.transforms import multi_scale_crop_params  # noqa: E402
from datasets.video_dataset import AugmentConfig, ClipConfig, MaskConfig, VideoClipDataset, collate_clips  # noqa: E402
from shutdown import WORKER_INIT  # noqa: E402

VARIANTS = ("ours", "ours_gpu_augment", "official")


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser("DataLoader throughput per core and GPUs fed per node")
    p.add_argument("--csv", required=True, help="pretraining CSV (path per line)")
    p.add_argument("--data_path", default="")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--num_workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch_size", type=int, default=8, help="clips per batch")
    p.add_argument("--warmup", type=int, default=2, help="batches skipped per round")
    p.add_argument("--batches", type=int, default=6, help="batches timed per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=BACKENDS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where ours_gpu_augment augments (and where batches are moved for every variant)")
    p.add_argument("--gpu_clips_per_s", type=float, default=1650.0,
                   help="clips/s one GPU trains (default: ViT-B SIGMA-MLP, H100, 40%% MFU, 239 GFLOP per clip)")
    p.add_argument("--step_time", type=float, help="measured seconds per step; with --step_batch sets --gpu_clips_per_s")
    p.add_argument("--step_batch", type=int, help="clips per GPU per step of --step_time")
    p.add_argument("--cores_per_gpu", type=int, default=16)
    return p.parse_args(argv)


class OfficialPathDataset(torch.utils.data.Dataset):
    """The official pretraining item (VideoMAE/SIGMA `VideoMAE.__getitem__`) on our frame indices."""

    def __init__(self, paths: List[str], clip: ClipConfig, mask_ratio: float, tubelet: int = 2, patch: int = 16):
        self.paths, self.clip = paths, clip
        self.spatial = (clip.input_size // patch) ** 2
        self.num_masked = int(mask_ratio * self.spatial)
        self.slots = clip.num_frames // tubelet
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN * clip.num_frames).view(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD * clip.num_frames).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int):
        import decord

        rng = torch.Generator().manual_seed(item)
        reader = decord.VideoReader(self.paths[item], num_threads=1, ctx=decord.cpu(0))
        indices = dense_indices(len(reader), self.clip.num_frames, self.clip.sampling_rate, "train", rng)
        frames = reader.get_batch(indices).asnumpy()  # [T, H, W, C]
        del reader
        images = [Image.fromarray(frames[t]).convert("RGB") for t in range(len(indices))]
        size = self.clip.input_size
        top, left, h, w = multi_scale_crop_params(frames.shape[1], frames.shape[2], size, rng)
        images = [im.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR) for im in images]
        stacked = np.concatenate([np.asarray(im) for im in images], axis=2)  # Stack: [H, W, 3T]
        video = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # ToTorchFormatTensor
        video = video.sub_(self.mean).div_(self.std)  # GroupNormalize
        video = video.view(self.clip.num_frames, 3, size, size).transpose(0, 1)  # [C, T, H, W]
        mask = np.hstack([np.zeros(self.spatial - self.num_masked), np.ones(self.num_masked)])
        np.random.shuffle(mask)  # TubeMaskingGenerator
        return video, np.tile(mask, (self.slots, 1)).flatten()


def build_variant(variant: str, args: argparse.Namespace, paths: List[str], samples):
    """(dataset, collate_fn, on_device) of one variant; on_device(batch) finishes a batch on the device."""
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size)
    if variant == "official":
        return OfficialPathDataset(paths, clip, args.mask_ratio), None, lambda batch: batch[0].to(args.device)
    grid = (args.num_frames // 2, args.input_size // 16, args.input_size // 16)
    gpu = variant == "ours_gpu_augment"
    dataset = VideoClipDataset(samples, "pretrain", clip, AugmentConfig(), MaskConfig(mask_ratio=args.mask_ratio, grid=grid),
                               video_backend=args.video_backend, gpu_augment=gpu)
    if not gpu:
        return dataset, collate_clips, lambda batch: batch["video"].to(args.device, non_blocking=True)
    device = torch.device(args.device)
    return dataset, collate_clips, lambda batch: augment_batch(batch, device, args.input_size)["video"]


class StampedCollate:
    """`collate(items)` with the collating worker's id and its process CPU seconds at the end."""

    def __init__(self, collate):
        self.collate = collate or torch.utils.data.default_collate

    def __call__(self, items):
        info = torch.utils.data.get_worker_info()
        return self.collate(items), (info.id if info else -1), time.process_time()


def time_round(variant: str, args: argparse.Namespace, num_workers: int, paths, samples) -> Dict[str, float]:
    dataset, collate, on_device = build_variant(variant, args, paths, samples)
    warmup = max(args.warmup, num_workers)  # every worker's first batch (its start) is left out
    order = [i % len(dataset) for i in range((warmup + args.batches) * args.batch_size)]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order), batch_size=args.batch_size, num_workers=num_workers,
        collate_fn=StampedCollate(collate), pin_memory=args.device.startswith("cuda"), persistent_workers=True,
        worker_init_fn=WORKER_INIT, drop_last=True)
    batches = iter(loader)
    start: Dict[int, float] = {}  # worker -> CPU stamp of its last warm-up batch
    for _ in range(warmup):
        batch, worker, stamp = next(batches)
        on_device(batch)
        start[worker] = stamp
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    end, clips_of = dict(start), {w: 0 for w in start}
    m0, t0 = time.process_time(), time.perf_counter()
    for _ in range(args.batches):
        batch, worker, stamp = next(batches)
        clips = on_device(batch).shape[0]
        end[worker] = stamp
        clips_of[worker] = clips_of.get(worker, 0) + clips
    sync()
    wall, main_cpu = time.perf_counter() - t0, time.process_time() - m0
    del batches, loader
    if set(clips_of) - set(start):
        raise RuntimeError(f"a worker made no warm-up batch: raise --warmup above {warmup}")
    clips = sum(clips_of.values())
    worker_cpu = sum(end[w] - start[w] for w in start)
    return {"clips": clips, "wall_clips_per_s": clips / wall, "worker_cpu_ms_per_clip": 1e3 * worker_cpu / clips,
            "main_cpu_ms_per_clip": 1e3 * main_cpu / clips}


def feed(record: Dict[str, float], gpu_clips_per_s: float, cores_per_gpu: int) -> Dict[str, float]:
    """Per-core rate and what it implies for one GPU of a node (module docstring)."""
    per_core = 1e3 / record["worker_cpu_ms_per_clip"]
    figures = {"clips_per_s_per_core": per_core, "cores_needed_per_gpu": gpu_clips_per_s / per_core,
               "gpu_fed_fraction": (cores_per_gpu - 1) * per_core / gpu_clips_per_s}
    return {k: float(f"{v:.3g}") for k, v in figures.items()}  # 3 significant digits


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    gpu_rate = args.step_batch / args.step_time if args.step_time and args.step_batch else args.gpu_clips_per_s
    samples = read_annotations(args.csv, args.data_path, with_labels=False)
    paths = [s.path for s in samples]
    runs: Dict[tuple, List[Dict[str, float]]] = {}
    for round_index in range(args.rounds):
        for num_workers in args.num_workers:
            for variant in args.variants:
                record = time_round(variant, args, num_workers, paths, samples)
                runs.setdefault((variant, num_workers), []).append(record)
                print(json.dumps({"variant": variant, "num_workers": num_workers, "round": round_index,
                                  **{k: round(v, 2) for k, v in record.items()}}), flush=True)
    base = {"csv": args.csv, "backend": args.video_backend, "batch_size": args.batch_size, "frames": args.num_frames,
            "sampling_rate": args.sampling_rate, "input_size": args.input_size, "device": args.device,
            "gpu_clips_per_s": gpu_rate, "cores_per_gpu": args.cores_per_gpu, "worker_threads": 1}
    for (variant, num_workers), records in runs.items():
        median = {k: statistics.median(r[k] for r in records) for k in records[0] if k != "clips"}
        print(json.dumps({"summary": variant, "num_workers": num_workers, "rounds": len(records), **base,
                          **{k: round(v, 2) for k, v in median.items()}, **feed(median, gpu_rate, args.cores_per_gpu)}),
              flush=True)


if __name__ == "__main__":
    main(get_args())
