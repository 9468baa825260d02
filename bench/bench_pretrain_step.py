"""Time one pretraining step (forward, loss, backward, AdamW) on synthetic clips.

Prints one JSON line per variant. With --official_dir pointing at a checkout of the official
SIGMA code, the official model and loss are timed in the same process on the same clip, mask
and weights (loaded strictly into ours), so the ratio is a like-for-like comparison.

    python bench/bench_pretrain_step.py --model pretrain_videomae_small_patch16_224 --target_type mlp \
        --loss_func SWAV --batch_size 2 --official_dir /path/to/SIGMA
"""
import argparse
import importlib
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine_for_pretraining import compute_loss  # noqa: E402
from masking_generator import tube_mask  # noqa: E402
from modeling_pretrain import MODELS  # noqa: E402

DECODER_DIM = {"pixel": 1536, "mlp": 256}


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser("pretraining step benchmark")
    p.add_argument("--model", default="pretrain_videomae_small_patch16_224", choices=sorted(MODELS))
    p.add_argument("--target_type", default="mlp", choices=sorted(DECODER_DIM))
    p.add_argument("--loss_func", default="SWAV", choices=["L2", "SWAV"])
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--num_prototypes", type=int, default=3000)
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--official_dir", default="", help="checkout of the official SIGMA code to time beside ours")
    return p.parse_args()


def time_steps(step, warmup: int, iters: int) -> list:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def official_model_and_step(args, videos, mask, ours):
    """Build the official model from --official_dir, copy our weights, return its step function."""
    sys.path.insert(0, args.official_dir)
    saved = {m: sys.modules.pop(m) for m in ("modeling_pretrain", "modeling_finetune", "utils") if m in sys.modules}
    try:
        official = importlib.import_module("modeling_pretrain")
        official_utils = importlib.import_module("utils")
    finally:
        sys.path.remove(args.official_dir)
        for name in ("modeling_pretrain", "modeling_finetune", "utils"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    extra = dict(world_size=1, eps=0.05, sinkhorn_iterations=10) if args.loss_func == "SWAV" else {}
    model = getattr(official, args.model)(
        decoder_depth=4, decoder_num_classes=DECODER_DIM[args.target_type], target_type=args.target_type,
        loss_func=args.loss_func, num_prototypes=args.num_prototypes, **extra)
    model.load_state_dict(ours.state_dict(), strict=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    ce, mse = torch.nn.CrossEntropyLoss(), torch.nn.MSELoss()

    def step():
        # The official engine's target building and loss (engine_for_pretraining.train_one_epoch).
        with torch.no_grad():
            un = videos * std + mean
            B, C, T, H, W = un.shape
            x = un.reshape(B, C, T // 2, 2, H // 16, 16, W // 16, 16).permute(0, 2, 4, 6, 3, 5, 7, 1)
            x = x.reshape(B, -1, 2 * 16 * 16, C)
            x = (x - x.mean(-2, keepdim=True)) / (x.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
            labels = x.flatten(2)[mask].reshape(B, -1, 2 * 16 * 16 * C)
        out, (s1, q1), (s2, q2) = model(videos, mask, labels)
        if args.loss_func == "SWAV":
            loss = ce((s1 / 0.1).permute(0, 2, 1), q2.argmax(-1)) + ce((s2 / 0.1).permute(0, 2, 1), q1.argmax(-1))
        else:
            loss = mse(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    del official_utils
    return step


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = MODELS[args.model](img_size=args.input_size, all_frames=args.num_frames, decoder_depth=4,
                              decoder_num_classes=DECODER_DIM[args.target_type], target_type=args.target_type,
                              loss_func=args.loss_func, num_prototypes=args.num_prototypes)
    videos = torch.randn(args.batch_size, 3, args.num_frames, args.input_size, args.input_size)
    mask = tube_mask(args.batch_size, ours.encoder.grid_size, args.mask_ratio)
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def our_step():
        loss, _ = compute_loss(ours, videos, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    variants = {}
    if args.official_dir:
        variants["official"] = official_model_and_step(args, videos, mask, ours)
    variants["ours"] = our_step
    base = None
    for name, step in variants.items():
        times = time_steps(step, args.warmup, args.iters)
        med = statistics.median(times)
        base = base or med
        print(json.dumps({"variant": name, "model": args.model, "target_type": args.target_type,
                          "loss_func": args.loss_func, "batch_size": args.batch_size, "frames": args.num_frames,
                          "input_size": args.input_size, "threads": torch.get_num_threads(),
                          "median_step_s": round(med, 4), "clips_per_s": round(args.batch_size / med, 3),
                          "relative_to_first": round(med / base, 3)}), flush=True)


if __name__ == "__main__":
    main(get_args())
