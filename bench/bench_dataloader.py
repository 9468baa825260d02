"""Data pipeline throughput for an annotation CSV.

Stage times (open, decode, augment) are measured in this process on one thread, one item at a
time: per-core figures. `--num_workers N` also times the whole DataLoader (N worker processes,
each with one thread). One JSON line per run.

    python -m datasets.synthetic --out /tmp/demo
    python bench/bench_dataloader.py --csv /tmp/demo/pretrain.csv --data_path /tmp/demo --mode pretrain
"""
import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.annotations import read_annotations  # noqa: E402
from datasets.decoding import BACKENDS, DEFAULT_BACKEND, open_video  # noqa: E402
from datasets.transforms import multi_scale_crop_params  # noqa: E402
from datasets.video_dataset import (AugmentConfig, ClipConfig, VideoClipDataset,  # noqa: E402
                                    collate_clips)


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser("data pipeline benchmark")
    p.add_argument("--csv", required=True)
    p.add_argument("--data_path", default="")
    p.add_argument("--mode", default="pretrain", choices=["pretrain", "train", "val", "test"])
    p.add_argument("--sampling", default="dense", choices=["dense", "segment"])
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=2)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--num_sample", type=int, default=1)
    p.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=BACKENDS)
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                   help="time these backends side by side on the same items instead of --video_backend")
    p.add_argument("--num_items", type=int, default=40, help="items timed per stage")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="stage times as wall-clock or as this process's CPU time (all its threads): on a "
                        "machine shared with other jobs, CPU time is the steadier per-core figure")
    p.add_argument("--num_workers", type=int, default=0, help="also time a DataLoader with this many workers")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--pil_reference", action="store_true",
                   help="pretrain mode: also time the official frame-by-frame PIL augmentation on the same clips")
    return p.parse_args(argv)


def stage_times(datasets: Sequence[VideoClipDataset], num_items: int, clock=time.perf_counter) -> List[dict]:
    """Seconds per item of each stage for each dataset (same samples, one backend each), run the
    way the dataset runs them; item i of every dataset is timed before item i + 1 of any, and
    the dataset timed first rotates from item to item."""
    totals = [{"open": 0.0, "decode": 0.0, "augment": 0.0} for _ in datasets]
    n = min(num_items, len(datasets[0]))
    for dataset in datasets:  # the first open loads the decoder's libraries: not a per-clip cost
        open_video(dataset.samples[0].path, dataset.video_backend, dataset.num_threads)
    pairs = list(zip(datasets, totals))
    for item in range(n):
        first = item % len(pairs)
        for dataset, total in pairs[first:] + pairs[:first]:
            rng = torch.Generator().manual_seed(item)
            path = dataset.samples[item % len(dataset.samples)].path
            t0 = clock()
            reader = open_video(path, dataset.video_backend, dataset.num_threads)
            t1 = clock()
            frames = dataset._decode_frames(reader, 0, rng)
            t2 = clock()
            # The dataset drops its reader before augmenting; a live decord reader keeps a thread
            # busy that made the augmentation here twice as slow.
            del reader
            dataset._views(frames, rng)
            t3 = clock()
            total["open"] += t1 - t0
            total["decode"] += t2 - t1
            total["augment"] += t3 - t2
    return [{k: v / n for k, v in total.items()} for total in totals]


def pil_reference_augment(frames: torch.Tensor, size: int, rng: torch.Generator) -> torch.Tensor:
    """The official pretraining augmentation path step by step, for comparison: per-frame PIL
    images (converted to RGB), GroupMultiScaleCrop (PIL crop + bilinear resize), Stack (channel
    concatenation), ToTorchFormatTensor (HWC -> CHW, /255), GroupNormalize (a loop over the 3T
    channels) and the final [T, 3, H, W] -> [3, T, H, W] view."""
    images = [Image.fromarray(f).convert("RGB") for f in frames.permute(0, 2, 3, 1).numpy()]
    top, left, h, w = multi_scale_crop_params(frames.shape[-2], frames.shape[-1], size, rng)
    images = [im.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR) for im in images]
    stacked = np.concatenate([np.asarray(im) for im in images], axis=2)  # [H, W, 3T]
    clip = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # [3T, H, W]
    mean, std = IMAGENET_DEFAULT_MEAN * len(images), IMAGENET_DEFAULT_STD * len(images)
    for channel, m, s in zip(clip, mean, std):
        channel.sub_(m).div_(s)
    return clip.view(len(images), 3, size, size).transpose(0, 1)  # [C, T, H, W]


def reference_augment_time(dataset: VideoClipDataset, num_items: int) -> float:
    """Seconds per item of `pil_reference_augment` on the same decoded clips."""
    total = 0.0
    for item in range(min(num_items, len(dataset))):
        rng = torch.Generator().manual_seed(item)
        reader = open_video(dataset.samples[item % len(dataset.samples)].path, dataset.video_backend)
        frames = dataset._decode_frames(reader, 0, rng)
        t0 = time.perf_counter()
        pil_reference_augment(frames, dataset.clip.input_size, rng)
        total += time.perf_counter() - t0
    return total / min(num_items, len(dataset))


def loader_clips_per_s(dataset: VideoClipDataset, num_workers: int, batch_size: int, num_items: int) -> float:
    subset = torch.utils.data.Subset(dataset, list(range(min(num_items, len(dataset)))))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_clips, worker_init_fn=lambda _: torch.set_num_threads(1))
    t0 = time.perf_counter()
    clips = sum(batch["video"].shape[0] for batch in loader)
    return clips / (time.perf_counter() - t0)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    samples = read_annotations(args.csv, args.data_path, with_labels=args.mode != "pretrain")
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, sampling=args.sampling,
                      input_size=args.input_size, short_side_size=args.input_size)
    datasets = [VideoClipDataset(samples, args.mode, clip, AugmentConfig(), num_sample=args.num_sample,
                                 video_backend=backend) for backend in args.backends or [args.video_backend]]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for dataset, stages in zip(datasets, stage_times(datasets, args.num_items, clock)):
        print(json.dumps(backend_record(args, dataset, stages)), flush=True)


def backend_record(args: argparse.Namespace, dataset: VideoClipDataset, stages: dict) -> dict:
    per_item = sum(stages.values())
    record = {"csv": args.csv, "mode": args.mode, "backend": dataset.video_backend, "num_sample": args.num_sample,
              "frames": args.num_frames, "input_size": args.input_size, "clock": args.clock,
              **{f"{k}_ms": round(v * 1e3, 2) for k, v in stages.items()},
              "decode_only_clips_per_s_per_core": round(1 / (stages["open"] + stages["decode"]), 2),
              "clips_per_s_per_core": round(dataset.num_views / per_item, 2)}
    if args.pil_reference:
        reference = reference_augment_time(dataset, args.num_items)
        record["pil_reference_augment_ms"] = round(reference * 1e3, 2)
        record["pil_reference_clips_per_s_per_core"] = round(1 / (stages["open"] + stages["decode"] + reference), 2)
    if args.num_workers:
        record[f"loader_clips_per_s_{args.num_workers}_workers"] = round(
            loader_clips_per_s(dataset, args.num_workers, args.batch_size, args.num_items), 2)
    return record


if __name__ == "__main__":
    main(get_args())
