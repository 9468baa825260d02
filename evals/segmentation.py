"""Unsupervised video object segmentation with frozen features (SIGMA's Benchmark II, following the
TimeTuning protocol of Salehi et al., ICCV 2023, SMSD75/Timetuning).

For every video one clip (--num_frames frames drawn at random in temporal order; 16 for DAVIS, 4
for YouTube-VOS) is resized to --input_size squared and encoded; the backbone's tokens
[T/tubelet * h * w, D] are standardised and reduced to --pca_dim by PCA (TimeTuning's
normalize_and_transform), upsampled bilinearly from the h x w patch grid to the frame grid (each
tube's map serves the `tubelet` frames it covers), and clustered per clip with k-means:
- clustering: K = the number of ground-truth labels in the clip (background included; or
  --clustering_k), clusters matched to labels by the Hungarian algorithm;
- overclustering: K = --overclustering_k (10), greedy many-to-one matching by precision.
The score is the mean over clips of each clip's mIoU over its labels (evals/segmentation_metrics.py).
J&F is not reported (see EVALUATION.md).

    python -m evals.segmentation --data_set davis --data_path data/DAVIS --finetune ckpt.pth \\
        --model vit_base_patch16_224 --output_dir output/seg_davis

The forward and k-means run in this process on --device; matching, scoring and the overlay PNGs
(output_dir/overlays/<video>.png: frame | ground truth | each matched prediction) run in a pool of
--workers processes meanwhile. Results: output_dir/segmentation_results.json.
"""
import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import os
import random
import time
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from datasets.vos import DATA_SETS, VOID, YTVOS_LABELS, UnreadableFrame, read_clip, sample_indices, vos_videos
from evals.common import account_scored, add_frozen_encoder_group, add_scoring_flags, load_encoder, require_one_encoder
from evals.kmeans import kmeans
from evals.segmentation_metrics import score_clip
from flags import ArgumentParser, add_run_flags, check_flags, resolve_precision
from progress import Progress
from run_log import write_config
from runtime import start_run
from shutdown import run_driver

logger = logging.getLogger("sigma")
DEFAULT_FRAMES = {"davis": 16, "ytvos": 4}
DEFAULT_SPLIT = {"davis": "val", "ytvos": "train"}


def at_least(low: int):
    return lambda v: v >= low, f">= {low}"


def get_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser("python -m evals.segmentation", "unsupervised video object segmentation of frozen features")
    add_frozen_encoder_group(p)
    g = p.add_argument_group("data")
    g.add_argument("--data_set", default="davis", choices=DATA_SETS, help="DAVIS-2017 or YouTube-VOS")
    g.add_argument("--data_path", required=True, help="DAVIS-2017 folder, or the YouTube-VOS folder holding train/")
    g.add_argument("--split", default=None, help="DAVIS ImageSets/2017/<split>.txt or the YouTube-VOS folder "
                                                 "(default: val for DAVIS, train for YouTube-VOS)")
    g.add_argument("--ytvos_labels", default="category", choices=YTVOS_LABELS,
                   help="score YouTube-VOS objects by category (TimeTuning) or by object id")
    g.add_argument("--num_frames", type=int, default=None,
                   help="clip length (default: the protocol's 16 for DAVIS, 4 for YouTube-VOS)")
    g.add_argument("--input_size", type=int, default=224, help="frames and masks are resized to this square")
    g.add_argument("--max_videos", type=int, default=0, help="evaluate the first N videos only (0: all)")
    add_scoring_flags(g)
    g = p.add_argument_group("clustering")
    g.add_argument("--clustering_k", type=int, default=0,
                   help="K of clustering (0: the number of ground-truth labels of each clip, TimeTuning's)")
    g.add_argument("--overclustering_k", type=int, default=10, help="K of overclustering (0: skip it)")
    g.add_argument("--pca_dim", type=int, default=50, help="PCA dimensions after standardising (0: no PCA)")
    g.add_argument("--kmeans_restarts", type=int, default=5, help="k-means runs per clip; the best is kept")
    g.add_argument("--kmeans_iters", type=int, default=50, help="Lloyd iterations per k-means run")
    g = p.add_argument_group("outputs and scoring")
    g.add_argument("--num_overlays", type=int, default=50, help="videos drawn as overlay PNGs (-1: all)")
    g.add_argument("--workers", type=int, default=4, help="scoring processes (0: score in this process)")
    add_run_flags(p, output_dir="output/segmentation", precision=True)
    args = p.parse_args(argv)
    check_flags(p, args, {"num_frames": at_least(1), "input_size": (lambda v: v % 16 == 0, "a multiple of 16"),
                          "max_videos": at_least(0), "clustering_k": at_least(0), "overclustering_k": at_least(0),
                          "pca_dim": at_least(0), "kmeans_restarts": at_least(1), "kmeans_iters": at_least(1),
                          "workers": at_least(0), "num_overlays": at_least(-1),
                          "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]")})
    return args


def standardise_and_project(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x [N, D] with every feature standardised, then projected on its top `dim` principal axes."""
    x = x.float()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    if not dim or dim >= x.shape[1]:
        return x
    _, vectors = torch.linalg.eigh(x.T @ x / max(1, x.shape[0] - 1))  # ascending eigenvalues
    return x @ vectors[:, -dim:].flip(1)  # [N, dim]


def cluster_tokens(tokens: torch.Tensor, *, tubelet: int, size: int, ks: Dict[str, int], pca_dim: int,
                   restarts: int, iters: int, seed: int) -> Dict[str, np.ndarray]:
    """Cluster maps {name: [T, size, size] uint8} of one clip's token grid [T/tubelet, h, w, D]: one
    k-means per entry of `ks` on the features upsampled bilinearly to the frame grid.

    Each tube's upsampled map stands for all `tubelet` frames it covers; clustering the T/tubelet
    maps and repeating the labels is the same k-means as clustering each frame's (duplicated) copy.
    """
    t, h, w, D = tokens.shape
    x = standardise_and_project(tokens.reshape(-1, D), pca_dim)  # [t*h*w, D']
    x = x.reshape(t, h, w, -1).permute(0, 3, 1, 2)  # [t, D', h, w]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # [t, D', S, S]
    x = x.permute(0, 2, 3, 1).reshape(t * size * size, -1)  # [t*S*S, D']
    maps = {}
    for name, k in ks.items():
        labels, _ = kmeans(x, k, restarts=restarts, iters=iters, seed=seed)  # [t*S*S]
        labels = labels.reshape(t, size, size).repeat_interleave(tubelet, dim=0)  # [T, S, S]
        maps[name] = labels.to(torch.uint8).cpu().numpy()
    return maps


@torch.no_grad()
def encode_clip(model, frames: np.ndarray, device: torch.device, precision: str) -> torch.Tensor:
    """Token grid [T/tubelet, h, w, D] (float) of frames [T, S, S, 3] uint8."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(3, 1, 1, 1)
    clip = torch.from_numpy(frames).to(device).permute(3, 0, 1, 2).float().div_(255)  # [3, T, S, S]
    clip = ((clip - mean) / std)[None]  # [1, 3, T, S, S]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        tokens = model.forward_tokens(clip)  # [1, T/t * h * w, D]
    T, S = frames.shape[0], frames.shape[1]
    p, t = model.patch_size, model.tubelet_size
    return tokens.float().reshape(T // t, S // p, S // p, -1)


def summarise(records: List[Dict[str, object]], protocols: List[str]) -> Dict[str, object]:
    """{protocol: {"miou": mean clip mIoU, "num_clips", "per_video": {video: {"miou", "iou": {id: IoU}}}}},
    every score in percent."""
    summary = {}
    for protocol in protocols:
        per_video = {r["video"]: {"miou": 100.0 * r[protocol]["miou"], "num_clusters": r[protocol]["num_clusters"],
                                  "iou": {i: 100.0 * v for i, v in r[protocol]["iou"].items()}} for r in records}
        summary[protocol] = {"miou": float(np.mean([v["miou"] for v in per_video.values()])),
                             "num_clips": len(per_video), "per_video": per_video}
    return summary


def make_pool(workers: int):
    if workers == 0:
        return None
    # spawn, not fork: a fork of this process would copy torch's thread pools mid-use; the jobs
    # themselves use numpy, scipy and PIL only
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def main(args: argparse.Namespace) -> Dict[str, object]:
    env = start_run(args.device, args.output_dir, "segmentation.log")
    if env.world_size > 1:
        raise SystemExit("python -m evals.segmentation runs in one process: launch it without torchrun / srun tasks")
    require_one_encoder(args)
    num_frames = args.num_frames or DEFAULT_FRAMES[args.data_set]
    split = args.split or DEFAULT_SPLIT[args.data_set]
    precision = resolve_precision(args.precision, env.device)
    videos = vos_videos(args.data_set, args.data_path, split, args.ytvos_labels)
    videos = videos[:args.max_videos] if args.max_videos else videos
    torch.manual_seed(args.seed)
    model = load_encoder(argparse.Namespace(**{**vars(args), "num_frames": num_frames}), env.device).eval()
    if num_frames % model.tubelet_size:
        raise SystemExit(f"--num_frames {num_frames} is not a multiple of the tubelet size {model.tubelet_size}")
    protocols = ["clustering"] + (["overclustering"] if args.overclustering_k else [])
    logger.info("%d %s %s videos, clips of %d frames at %d px, protocols %s", len(videos), args.data_set, split,
                num_frames, args.input_size, protocols)
    pool, pending, records, start = make_pool(args.workers), [], [], time.perf_counter()
    unreadable: Dict[str, str] = {}  # video name -> the file that did not decode, and why
    progress = Progress(len(videos), "segmentation (encode and cluster)", unit="clips")
    try:
        for i, video in enumerate(videos):
            indices = sample_indices(len(video.frames), num_frames, random.Random(f"{args.seed}/{video.name}"))
            try:
                frames, gt = read_clip(video, indices, args.input_size)  # [T, S, S, 3], [T, S, S]
            except UnreadableFrame as e:  # left out, named, counted against --max_bad_fraction
                logger.warning("video %s left out: %s", video.name, e)
                unreadable[video.name] = str(e)
                continue
            tokens = encode_clip(model, frames, env.device, precision)
            labels_in_clip = len(np.setdiff1d(np.unique(gt), [VOID]))  # void is no label
            ks = {"clustering": args.clustering_k or labels_in_clip, "overclustering": args.overclustering_k}
            maps = cluster_tokens(tokens, tubelet=model.tubelet_size, size=args.input_size,
                                  ks={p: ks[p] for p in protocols}, pca_dim=args.pca_dim,
                                  restarts=args.kmeans_restarts, iters=args.kmeans_iters, seed=args.seed)
            clusterings = {"clustering": (maps["clustering"], ks["clustering"], "hungarian")}
            if "overclustering" in maps:
                clusterings["overclustering"] = (maps["overclustering"], ks["overclustering"], "many_to_one")
            draw = args.num_overlays == -1 or i < args.num_overlays
            job = (video.name, gt, clusterings, frames if draw else None,
                   os.path.join(args.output_dir, "overlays", f"{video.name}.png") if draw else None)
            pending.append(pool.submit(score_clip, *job) if pool else score_clip(*job))
            waiting = [f for f in pending if not f.done()] if pool else []
            if len(waiting) > 2 * args.workers:  # bound the clips held in memory for the pool
                concurrent.futures.wait(waiting, return_when=concurrent.futures.FIRST_COMPLETED)
            progress.update()
        records = [r.result() if pool else r for r in pending]
    finally:
        progress.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    scored_names = {r["video"] for r in records}
    scoring = account_scored([v.name for v in videos],
                             torch.tensor([i for i, v in enumerate(videos) if v.name in scored_names]),
                             f"{args.data_set} {split}", args.max_bad_fraction, unreadable)
    results = {"data_set": args.data_set, "split": split, "num_frames": num_frames, "input_size": args.input_size,
               "checkpoint": args.finetune or "random_init", "seconds": time.perf_counter() - start,
               "listed": scoring["listed"], "left_out": scoring["left_out"], **summarise(records, protocols)}
    for protocol in protocols:
        logger.info("%s: mIoU %.2f over %d clips", protocol, results[protocol]["miou"], len(records))
    logger.info("%.1f s for %d clips (%s)", results["seconds"], len(records), env.device)
    with open(os.path.join(args.output_dir, "segmentation_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_config(args.output_dir, env, {**vars(args), "num_frames": num_frames, "split": split,
                                        "precision": precision})
    return results


if __name__ == "__main__":
    run_driver(main, get_args())
