"""Time the fine-tuning train augmentation chain on one synthetic uint8 clip.

Chain: random crop to --size (random_resized_crop or multi_scale_crop), horizontal flip,
RandAugment, ImageNet normalisation, random erasing. Each timed clip uses a fresh generator seed,
so the mean covers the spread of RandAugment ops. Prints one JSON line per crop variant.

    python bench/bench_transforms.py --threads 1 --clips 100
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

CROPS = {
    "random_resized_crop": T.random_resized_crop,
    "multi_scale_crop": T.multi_scale_crop,
}


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser("clip augmentation benchmark")
    p.add_argument("--shape", type=int, nargs=4, default=[16, 3, 240, 320], metavar=("T", "C", "H", "W"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--auto_augment", default="rand-m7-n4-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--clips", type=int, default=100, help="timed clips per chain")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main() -> None:
    args = get_args()
    torch.set_num_threads(args.threads)
    clip = torch.randint(0, 256, args.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rand_augment = T.RandAugment(args.auto_augment)

    for name, crop in CROPS.items():
        def chain(seed: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed)
            x = crop(clip, args.size, g)  # uint8 [T, C, size, size]
            x = T.horizontal_flip(x, g)
            x = rand_augment(x, g)
            video = T.to_normalized_float(x)  # float [C, T, size, size]
            return T.random_erasing(video, g, probability=args.reprob, mode="pixel")

        for seed in range(args.warmup):
            chain(10_000 + seed)
        times = []
        for seed in range(args.clips):
            t0 = time.perf_counter()
            chain(seed)
            times.append(time.perf_counter() - t0)
        mean = statistics.fmean(times)
        print(json.dumps({
            "chain": f"{name}+flip+{args.auto_augment}+normalize+erase{args.reprob}",
            "input": list(args.shape), "size": args.size, "threads": args.threads, "clips": args.clips,
            "clips_per_s": round(1.0 / mean, 1), "mean_ms": round(1e3 * mean, 2),
            "median_ms": round(1e3 * statistics.median(times), 2), "max_ms": round(1e3 * max(times), 2),
        }))


if __name__ == "__main__":
    main()
