"""SIGMA / VideoMAE pretraining on a list of videos.

    python -m datasets.synthetic --out data/demo
    python run_sigma_pretraining.py --data_path data/demo --data_path_csv data/demo/pretrain.csv \
        --model pretrain_videomae_small_patch16_224 --target_type mlp --loss_func SWAV \
        --input_size 112 --num_frames 8 --epochs 3

A single-process loop for now: the distributed, resumable driver with schedules, mixed
precision and DINO teachers builds on this.
"""
import argparse
import json
import logging
import math
import os
import time

import torch

from datasets.annotations import read_annotations
from datasets.decoding import BACKENDS
from datasets.video_dataset import (AugmentConfig, BadSampleTracker, ClipConfig, MaskConfig, VideoClipDataset,
                                    collate_clips)
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
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default="", help="root that relative paths in --data_path_csv refer to")
    g.add_argument("--data_path_csv", required=True, help="pretraining list: `path label` lines")
    g.add_argument("--num_frames", type=int, default=8)
    g.add_argument("--sampling_rate", type=int, default=2)
    g.add_argument("--input_size", type=int, default=112)
    g.add_argument("--augmentation", default="multi_scale_crop", choices=["multi_scale_crop", "resize"])
    g.add_argument("--num_sample", type=int, default=1, help="augmented views per decoded clip")
    g.add_argument("--video_backend", default="decord", choices=BACKENDS)
    g.add_argument("--num_workers", type=int, default=2)
    g.add_argument("--max_bad_fraction", type=float, default=0.2)
    g.add_argument("--mask_type", default="tube", choices=sorted(MASKS))
    g.add_argument("--mask_ratio", type=float, default=0.9)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=4, help="clips per step (after --num_sample)")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight_decay", type=float, default=0.05)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output_dir", default="output/demo")
    return p.parse_args()


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
    samples = read_annotations(args.data_path_csv, args.data_path, with_labels=False)
    dataset = VideoClipDataset(
        samples, "pretrain",
        ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size),
        AugmentConfig(pretrain_augmentation=args.augmentation),
        MaskConfig(mask_type=args.mask_type, mask_ratio=args.mask_ratio),
        num_sample=args.num_sample, video_backend=args.video_backend, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=max(1, args.batch_size // args.num_sample), shuffle=True, drop_last=True,
        num_workers=args.num_workers, collate_fn=collate_clips, persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(args.seed))
    tracker = BadSampleTracker(args.max_bad_fraction, epoch_size=len(dataset))
    metrics_path = os.path.join(args.output_dir, "log.txt")
    step = 0
    with open(metrics_path, "w") as log_file:
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            tracker.start_epoch()
            for batch in loader:
                tracker.update(batch)
                t0 = time.perf_counter()
                videos, mask = batch["video"].to(device), batch["mask"].to(device)
                loss, stats = compute_loss(model, videos, mask, normalize_target=args.normalize_target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                record = {"epoch": epoch, "step": step, **{k: float(v) for k, v in stats.items()},
                          "sec": time.perf_counter() - t0}
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"loss is {record['loss']} at step {step}; stopping")
                log_file.write(json.dumps(record) + "\n")
                logger.info("epoch %d step %d loss %.4f (%.2fs)", epoch, step, record["loss"], record["sec"])
                step += 1
            log_file.write(json.dumps({"epoch": epoch, **tracker.end_epoch()}) + "\n")
    ckpt = {"model": model.state_dict(), "epoch": args.epochs - 1, "step": step, "config": vars(args)}
    tmp = os.path.join(args.output_dir, "checkpoint.pth.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, os.path.join(args.output_dir, "checkpoint.pth"))
    logger.info("wrote %s and %s", metrics_path, os.path.join(args.output_dir, "checkpoint.pth"))


if __name__ == "__main__":
    main(get_args())
