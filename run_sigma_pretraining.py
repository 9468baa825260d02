"""SIGMA / VideoMAE pretraining.

For now this trains on a fixed set of synthetic clips (moving, textured squares) so that the
whole objective can be run and watched on a CPU; the video data pipeline and the distributed,
resumable driver replace the synthetic source in later steps.

    python run_sigma_pretraining.py --model pretrain_videomae_small_patch16_224 \
        --target_type mlp --loss_func SWAV --input_size 112 --num_frames 8 --steps 30
"""
import argparse
import json
import logging
import math
import os
import time

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from engine_for_pretraining import compute_loss
from masking_generator import MASKS
from modeling_pretrain import LOSS_FUNCS, MODELS, TARGET_TYPES

logger = logging.getLogger("sigma")


def str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser("SIGMA pretraining")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="pretrain_videomae_small_patch16_224", choices=sorted(MODELS))
    g.add_argument("--decoder_depth", type=int, default=4)
    g.add_argument("--target_type", default="mlp", choices=TARGET_TYPES[:2],
                   help="pixel (VideoMAE) or mlp (SIGMA-MLP); DINO teachers come with the full driver")
    g.add_argument("--loss_func", default="SWAV", choices=LOSS_FUNCS)
    g.add_argument("--num_prototypes", type=int, default=256)
    g.add_argument("--sinkhorn_eps", type=float, default=0.05)
    g.add_argument("--sinkhorn_iterations", type=int, default=10)
    g.add_argument("--normalize_target", "--normlize_target", type=str2bool, default=True)
    g.add_argument("--drop_path", type=float, default=0.0)
    g = p.add_argument_group("masking and clips")
    g.add_argument("--mask_type", default="tube", choices=sorted(MASKS))
    g.add_argument("--mask_ratio", type=float, default=0.9)
    g.add_argument("--input_size", type=int, default=112)
    g.add_argument("--num_frames", type=int, default=8)
    g.add_argument("--num_clips", type=int, default=8, help="size of the fixed synthetic clip set")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=2)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight_decay", type=float, default=0.05)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output_dir", default="output/demo")
    return p.parse_args()


def synthetic_clips(num: int, frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[num, 3, T, H, W] ImageNet-normalised clips of a textured square moving over noise."""
    clips = torch.rand(num, 3, frames, size, size, generator=generator) * 0.2
    side = size // 3
    for i in range(num):
        colour = torch.rand(3, 1, 1, generator=generator)
        x0, y0 = torch.randint(0, size - side, (2,), generator=generator).tolist()
        dx, dy = torch.randint(-3, 4, (2,), generator=generator).tolist()
        for t in range(frames):
            x = min(max(x0 + dx * t, 0), size - side)
            y = min(max(y0 + dy * t, 0), size - side)
            clips[i, :, t, y:y + side, x:x + side] = colour
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1)
    return (clips - mean) / std


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=2)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    decoder_dim = 1536 if args.target_type == "pixel" else 256
    model = MODELS[args.model](
        img_size=args.input_size, all_frames=args.num_frames, decoder_depth=args.decoder_depth,
        decoder_num_classes=decoder_dim, target_type=args.target_type, loss_func=args.loss_func,
        num_prototypes=args.num_prototypes, sinkhorn_eps=args.sinkhorn_eps,
        sinkhorn_iterations=args.sinkhorn_iterations, drop_path_rate=args.drop_path).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "mask_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "mask_token" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    clips = synthetic_clips(args.num_clips, args.num_frames, args.input_size, gen)
    grid = model.encoder.grid_size
    metrics_path = os.path.join(args.output_dir, "log.txt")
    with open(metrics_path, "w") as log_file:
        for step in range(args.steps):
            t0 = time.perf_counter()
            idx = torch.randint(0, args.num_clips, (args.batch_size,), generator=gen)
            videos = clips[idx].to(device)
            mask = MASKS[args.mask_type](args.batch_size, grid, args.mask_ratio, generator=gen).to(device)
            loss, stats = compute_loss(model, videos, mask, normalize_target=args.normalize_target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = {"step": step, **{k: float(v) for k, v in stats.items()}, "sec": time.perf_counter() - t0}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"loss is {record['loss']} at step {step}; stopping")
            log_file.write(json.dumps(record) + "\n")
            logger.info("step %d/%d loss %.4f (%.2fs)", step + 1, args.steps, record["loss"], record["sec"])
    ckpt = {"model": model.state_dict(), "step": args.steps, "config": vars(args)}
    tmp = os.path.join(args.output_dir, "checkpoint.pth.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, os.path.join(args.output_dir, "checkpoint.pth"))
    logger.info("wrote %s and %s", metrics_path, os.path.join(args.output_dir, "checkpoint.pth"))


if __name__ == "__main__":
    main(get_args())
