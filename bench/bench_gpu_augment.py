"""What --gpu_augment moves out of the DataLoader workers, per core (PRETRAIN.md, "Augmenting on the GPU").

For each pretraining augmentation and view count, on one thread in this process: a worker's time
per video (decode + augmentation, or decode + crop boxes with gpu_augment), its collate time per
batch, and the device augmentation per batch on --device; medians of every call. One JSON line
per configuration.

    python -m datasets.synthetic --out /tmp/ga_bench --num_train 8 --num_val 1 --num_test 1 \\
        --frames 80 --height 240 --width 320
    OMP_NUM_THREADS=1 python bench/bench_gpu_augment.py --data_path /tmp/ga_bench
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.annotations import read_annotations  # noqa: E402
from datasets.gpu_augment import augment_batch  # noqa: E402
from datasets.video_dataset import (AugmentConfig, ClipConfig, MaskConfig, VideoClipDataset,  # noqa: E402
                                    collate_clips)


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser("gpu_augment benchmark", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_path", required=True, help="folder with pretrain.csv (python -m datasets.synthetic)")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--batch_videos", type=int, default=8, help="videos per collated batch")
    p.add_argument("--repeats", type=int, default=4, help="passes over the list")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def measure(samples, args, augmentation: str, views: int, gpu_augment: bool) -> Dict[str, float]:
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size)
    grid = (args.num_frames // 2, args.input_size // 16, args.input_size // 16)
    ds = VideoClipDataset(samples, "pretrain", clip, AugmentConfig(pretrain_augmentation=augmentation),
                          MaskConfig(grid=grid), num_sample=views, gpu_augment=gpu_augment)
    ds[0]  # warm-up: first open, allocator
    items, item_s = [], []
    for i in range(args.repeats * len(ds)):
        t = time.perf_counter()
        items.append(ds[i % len(ds)])
        item_s.append(time.perf_counter() - t)
    batches, collate_s = [], []
    for i in range(0, len(items) - args.batch_videos + 1, args.batch_videos):
        t = time.perf_counter()
        batches.append(collate_clips(items[i:i + args.batch_videos]))
        collate_s.append(time.perf_counter() - t)
    # Medians: the runner's cores are shared, and a neighbour's burst should not move the figure.
    record = {"item_ms": 1e3 * statistics.median(item_s), "collate_ms": 1e3 * statistics.median(collate_s)}
    if gpu_augment:
        device = torch.device(args.device)
        augment_s = []
        for batch in batches:
            t = time.perf_counter()
            augment_batch(batch, device, args.input_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            augment_s.append(time.perf_counter() - t)
        record["device_augment_ms"] = 1e3 * statistics.median(augment_s)
    return record


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_args(argv)
    samples = read_annotations(os.path.join(args.data_path, "pretrain.csv"), args.data_path, with_labels=False)
    for augmentation in ("multi_scale_crop", "resize"):
        for views in (1, 2):
            row = {"augmentation": augmentation, "num_sample": views, "num_frames": args.num_frames,
                   "input_size": args.input_size, "batch_videos": args.batch_videos, "device": args.device,
                   "threads": torch.get_num_threads()}
            for gpu_augment, key in ((False, "worker_path"), (True, "gpu_augment")):
                row.update({f"{key}_{k}": round(v, 1)
                            for k, v in measure(samples, args, augmentation, views, gpu_augment).items()})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
