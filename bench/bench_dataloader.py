"""Data pipeline throughput for an annotation CSV.

Stage times (open, decode, augment) are measured in this process on one thread, one item at a
time: per-core figures. `--num_workers N` also times the whole DataLoader (N worker processes,
each with one thread). One JSON line per backend (`--backends`) or per variant (`--variants`).

`--variants` measures the decode levers of datasets/decoding.py one at a time against the same
files and clips, side by side in one run (item i of every variant before item i + 1 of any), with
the official path among them: "official" decodes the same frames with decord and, in pretrain
mode, augments them with the official per-frame PIL path (other modes: our augmentation).
"decode_only_clips_per_s_per_core" is what a worker costs when the GPU augments (--gpu_augment):
open, decode and the uint8 stack. In test mode with several segments, open is counted in decode
(the segment cache saves opens too).

    python -m datasets.synthetic --out /tmp/demo
    python bench/bench_dataloader.py --csv /tmp/demo/pretrain.csv --data_path /tmp/demo --mode pretrain
    python bench/bench_dataloader.py --csv /tmp/demo/pretrain.csv --data_path /tmp/demo --mode pretrain \
        --variants official no_levers no_skip_nonref no_keyframe_seek convert_every_frame levers --clock cpu
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.annotations import read_annotations  # noqa: E402
from datasets.decoding import BACKENDS, DEFAULT_BACKEND, DecodeOptions, open_video  # noqa: E402
from datasets.transforms import multi_scale_crop_params  # noqa: E402
from datasets.video_dataset import (AugmentConfig, ClipConfig, MaskConfig, VideoClipDataset,  # noqa: E402
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
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="time these decode variants side by side (PyAV levers one at a time, and the official "
                        "path) instead of --backends")
    p.add_argument("--decode_short_side", type=int, default=None,
                   help="short side of the *decoder_scale variants (scaling in the decoder, off elsewhere)")
    p.add_argument("--test_num_segment", type=int, default=1, help="test mode: temporal segments per video")
    p.add_argument("--test_num_crop", type=int, default=1, help="test mode: spatial crops per segment")
    args = p.parse_args(argv)
    scaled = [v for v in args.variants or [] if v.endswith("decoder_scale")]
    if scaled and not args.decode_short_side:
        p.error(f"the variants {scaled} need --decode_short_side")
    return args


# Variant -> (backend, decode options, test segment cache). Each turns levers off (or, for
# decoder_scale, the opt-in one on) from "levers", the default reader; "no_levers" turns off both
# PyAV levers (skip_nonref, keyframe_seek) and keeps the test segment cache.
VARIANTS = {
    "levers": ("pyav", DecodeOptions(), True),
    "no_levers": ("pyav", DecodeOptions(skip_nonref=False, keyframe_seek=False), True),
    "no_skip_nonref": ("pyav", DecodeOptions(skip_nonref=False), True),
    "no_keyframe_seek": ("pyav", DecodeOptions(keyframe_seek=False), True),
    "convert_every_frame": ("pyav", DecodeOptions(convert_every_frame=True), True),
    "decoder_scale": ("pyav", None, True),  # DecodeOptions(short_side=--decode_short_side)
    "decord": ("decord", DecodeOptions(), False),  # the official backend under our augmentation
    "decord_decoder_scale": ("decord", None, False),
    "torchcodec": ("torchcodec", DecodeOptions(), False),
    "torchcodec_decoder_scale": ("torchcodec", None, False),
    "no_segment_cache": ("pyav", DecodeOptions(), False),
    "official": ("decord", DecodeOptions(), False),
}


@dataclass
class Variant:
    """One timed configuration: a dataset (backend, decode options) and its augmentation."""
    name: str
    dataset: VideoClipDataset
    augment: Callable  # (frames uint8 [T, C, H, W], rng) -> views


def stage_times(variants: Sequence[Variant], num_items: int, clock=time.perf_counter) -> List[dict]:
    """Seconds per item of each stage for each variant (same samples), run the way the dataset runs
    them; item i of every variant is timed before item i + 1 of any, and the variant timed first
    rotates from item to item. Also the frames the PyAV decoder returned per item."""
    totals = [{"open": 0.0, "decode": 0.0, "augment": 0.0, "frames_decoded": 0} for _ in variants]
    n = min(num_items, len(variants[0].dataset))
    for variant in variants:  # the first open loads the decoder's libraries: not a per-clip cost
        open_video(variant.dataset.samples[0].path, variant.dataset.video_backend, variant.dataset.num_threads)
    pairs = list(zip(variants, totals))
    for item in range(n):
        first = item % len(pairs)
        for variant, total in pairs[first:] + pairs[:first]:
            dataset = variant.dataset
            rng = torch.Generator().manual_seed(item)
            video, segment = divmod(item, dataset.test_num_segment)
            path = dataset.samples[video % len(dataset.samples)].path
            t0 = clock()
            if dataset.test_num_segment > 1:  # open and decode together: the segment cache saves both
                frames = dataset._decode(path, segment, rng)
                t1 = t0
            else:
                reader = open_video(path, dataset.video_backend, dataset.num_threads, dataset.decode)
                t1 = clock()
                frames = dataset._decode_frames(reader, segment, rng)
                total["frames_decoded"] += getattr(reader, "frames_decoded", 0)
                # The dataset drops its reader before augmenting; a live decord reader keeps a thread
                # busy that made the augmentation here twice as slow.
                del reader
            t2 = clock()
            variant.augment(frames, rng)
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


def build_variants(args: argparse.Namespace, samples) -> List[Variant]:
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, sampling=args.sampling,
                      input_size=args.input_size, short_side_size=args.input_size)

    # Pretraining datasets draw masks too: the token grid of a ViT with 2-frame tubelets and 16-pixel patches.
    mask = MaskConfig(grid=(args.num_frames // 2, args.input_size // 16, args.input_size // 16))

    def dataset(backend: str, decode: DecodeOptions = DecodeOptions(), cache: bool = True) -> VideoClipDataset:
        return VideoClipDataset(samples, args.mode, clip, AugmentConfig(), mask, num_sample=args.num_sample,
                                test_num_segment=args.test_num_segment, test_num_crop=args.test_num_crop,
                                video_backend=backend, decode=decode, test_segment_cache=cache)

    if not args.variants:
        datasets = [dataset(backend) for backend in args.backends or [args.video_backend]]
        return [Variant(d.video_backend, d, d._views) for d in datasets]
    variants = []
    for name in args.variants:
        backend, decode, cache = VARIANTS[name]
        d = dataset(backend, DecodeOptions(short_side=args.decode_short_side) if decode is None else decode, cache)
        augment = d._views
        if name == "official" and args.mode == "pretrain":
            augment = lambda frames, rng: pil_reference_augment(frames, args.input_size, rng)  # noqa: E731
        variants.append(Variant(name, d, augment))
    return variants


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    samples = read_annotations(args.csv, args.data_path, with_labels=args.mode != "pretrain")
    variants = build_variants(args, samples)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    records = [backend_record(args, variant, stages)
               for variant, stages in zip(variants, stage_times(variants, args.num_items, clock))]
    official = next((r for r in records if r.get("variant") == "official"), None)
    for record in records:
        if official is not None:  # the yardstick: our worker against the official one, per core
            record["speedup_vs_official"] = round(record["clips_per_s_per_core"] /
                                                  official["clips_per_s_per_core"], 2)
            record["decode_only_speedup_vs_official"] = round(record["decode_only_clips_per_s_per_core"] /
                                                              official["clips_per_s_per_core"], 2)
        print(json.dumps(record), flush=True)


def backend_record(args: argparse.Namespace, variant: Variant, stages: dict) -> dict:
    dataset = variant.dataset
    per_item = stages["open"] + stages["decode"] + stages["augment"]
    record = {"csv": args.csv, "mode": args.mode, "backend": dataset.video_backend, "num_sample": args.num_sample,
              "frames": args.num_frames, "sampling_rate": args.sampling_rate, "input_size": args.input_size,
              "clock": args.clock, "threads": torch.get_num_threads(), "items": min(args.num_items, len(dataset)),
              **{f"{k}_ms": round(stages[k] * 1e3, 2) for k in ("open", "decode", "augment")},
              # Views per second: one decode gives num_sample (or test_num_crop) views.
              "decode_only_clips_per_s_per_core": round(dataset.num_views / (stages["open"] + stages["decode"]), 2),
              "clips_per_s_per_core": round(dataset.num_views / per_item, 2)}
    if args.variants:
        record["variant"] = variant.name
        if dataset.video_backend == "pyav" and dataset.test_num_segment == 1:
            record["frames_decoded_per_clip"] = round(stages["frames_decoded"], 1)
    if args.mode == "test":
        record["test_views"] = f"{args.test_num_segment}x{args.test_num_crop}"
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
