"""k-means for evals.segmentation: our batched torch k-means (evals/kmeans.py) against scikit-learn's
KMeans on the same points, the same K, restarts and iteration cap; wall time and inertia (summed
squared distance to the nearest centre, lower is better) of each.

The points are what one clip gives the evaluation: a token grid [T/2, 14, 14, --dim] upsampled
bilinearly to --size x --size (structured: a few smooth regions plus noise, like real features)
or Gaussian blobs (--data blobs).

    OMP_NUM_THREADS=2 python bench/bench_kmeans.py --size 112 --frames 16 --k 3 10
    python bench/bench_kmeans.py --device cuda --size 224 --frames 16 --k 3 10   # torch only on the GPU
"""
import argparse
import json
import logging
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evals.kmeans import kmeans  # noqa: E402

logger = logging.getLogger("bench_kmeans")


def clip_points(frames: int, size: int, dim: int, regions: int, seed: int) -> torch.Tensor:
    """[frames/2 * size * size, dim] points: `regions` smooth feature regions on a 14x14 grid, noise, upsampled."""
    g = torch.Generator().manual_seed(seed)
    t = max(1, frames // 2)
    centres = torch.randn(regions, dim, generator=g) * 3
    owner = F.interpolate(torch.rand(t, regions, 4, 4, generator=g), size=(14, 14), mode="bilinear").argmax(1)
    grid = centres[owner] + torch.randn(t, 14, 14, dim, generator=g)  # [t, 14, 14, D]
    x = F.interpolate(grid.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(-1, dim)


def blobs(n: int, dim: int, regions: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(regions, dim, generator=g) * 3
    return centres[torch.randint(regions, (n,), generator=g)] + torch.randn(n, dim, generator=g)


def inertia(x: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    centres = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x.double())
    counts = torch.bincount(labels, minlength=k).clamp_min(1)[:, None]
    return float(((x.double() - (centres / counts)[labels]) ** 2).sum())


def run_torch(x: torch.Tensor, k: int, restarts: int, iters: int, device: str) -> dict:
    x = x.to(device)
    if device.startswith("cuda"):
        kmeans(x, k, restarts=restarts, iters=iters)  # warm-up
        torch.cuda.synchronize()
    start = time.perf_counter()
    labels, _ = kmeans(x, k, restarts=restarts, iters=iters, seed=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "inertia": inertia(x.cpu(), labels.cpu(), k)}


def run_sklearn(x: torch.Tensor, k: int, restarts: int, iters: int) -> dict:
    from sklearn.cluster import KMeans
    start = time.perf_counter()
    fit = KMeans(n_clusters=k, init="k-means++", n_init=restarts, max_iter=iters, algorithm="lloyd",
                 random_state=0).fit(x.numpy())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "inertia": inertia(x, torch.from_numpy(fit.labels_).long(), k)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=("clip", "blobs"), default="clip")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112, help="frame grid the 14x14 tokens are upsampled to")
    p.add_argument("--dim", type=int, default=50, help="feature dimension (the evaluation's --pca_dim)")
    p.add_argument("--regions", type=int, default=4)
    p.add_argument("--k", type=int, nargs="+", default=[3, 10])
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_sklearn", action="store_true")
    p.add_argument("--seeds", type=int, default=2, help="data sets per K")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for k in args.k:
        for seed in range(args.seeds):
            x = (clip_points(args.frames, args.size, args.dim, args.regions, seed) if args.data == "clip"
                 else blobs(args.frames // 2 * args.size ** 2, args.dim, args.regions, seed))
            row = {"k": k, "seed": seed, "points": x.shape[0], "torch": run_torch(x, k, args.restarts, args.iters,
                                                                                 args.device)}
            if not args.no_sklearn:
                row["sklearn"] = run_sklearn(x, k, args.restarts, args.iters)
            rows.append(row)
            logger.info(json.dumps(row))
    logger.info("threads %d, device %s", torch.get_num_threads(), args.device)


if __name__ == "__main__":
    main()
