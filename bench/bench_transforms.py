"""Time the fine-tuning train augmentation on one synthetic uint8 clip, per chain:

- official: RandAugment on the whole decoded frames, then the random resized crop of the float
  clip, flip, random erasing (the default fine-tuning order, `VideoClipDataset._train_view`);
- crop_first: the crop first (uint8), flip, RandAugment on the crop, erasing (`--crop_first`);
- multi_scale_crop: the pretraining crop + flip + RandAugment + erasing, for reference.

Each timed clip uses a fresh generator seed (the same seeds for every chain), so the mean covers
the spread of RandAugment ops; the chains alternate clip by clip. Prints one JSON line per chain.

    OMP_NUM_THREADS=1 python bench/bench_transforms.py --threads 1 --clips 100
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets import transforms as T  # noqa: E402
from datasets.video_dataset import AugmentConfig, ClipConfig, VideoClipDataset  # noqa: E402


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("clip augmentation benchmark")
    p.add_argument("--shape", type=int, nargs=4, default=[16, 3, 240, 320], metavar=("T", "C", "H", "W"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--auto_augment", default="rand-m7-n4-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--clips", type=int, default=100, help="timed clips per chain")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def chains(args):
    """name -> fn(clip uint8 [T, C, H, W], generator) -> float [C, T, size, size]."""
    clip_config = ClipConfig(num_frames=args.shape[0], input_size=args.size)
    out = {}
    for name, crop_first in (("official", False), ("crop_first", True)):
        augment = AugmentConfig(auto_augment=args.auto_augment, reprob=args.reprob, crop_first=crop_first)
        dataset = VideoClipDataset([], "train", clip_config, augment)
        out[name] = dataset._train_view
    rand_augment = T.RandAugment(args.auto_augment, fill=T.OFFICIAL_FILL)

    def multi_scale(clip, g):
        x = T.horizontal_flip(T.multi_scale_crop(clip, args.size, g), g)
        return T.random_erasing(T.to_normalized_float(rand_augment(x, g)), g, probability=args.reprob)

    out["multi_scale_crop"] = multi_scale
    return out


def main(argv=None) -> None:
    args = get_args(argv)
    torch.set_num_threads(args.threads)
    clip = torch.randint(0, 256, args.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fns = chains(args)
    for name, chain in fns.items():
        for seed in range(args.warmup):
            chain(clip, torch.Generator().manual_seed(10_000 + seed))
    times = {name: [] for name in fns}
    # Chains interleaved clip by clip, so that a change in machine load hits all of them alike.
    for seed in range(args.clips):
        for name, chain in fns.items():
            g = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            chain(clip, g)
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        mean = statistics.fmean(t)
        print(json.dumps({
            "chain": name, "auto_augment": args.auto_augment, "reprob": args.reprob,
            "input": list(args.shape), "size": args.size, "threads": args.threads, "clips": args.clips,
            "clips_per_s": round(1.0 / mean, 1), "mean_ms": round(1e3 * mean, 2),
            "median_ms": round(1e3 * statistics.median(t), 2), "max_ms": round(1e3 * max(t), 2),
        }))


if __name__ == "__main__":
    main()
