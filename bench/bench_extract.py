"""Sliding-window feature extraction: extract_features.py against VideoMAEv2's way, in one run.

On generated long videos (a moving pattern on noise, H.264 with x264's default GOP, as original
files), both read the THUMOS14 windows (16 consecutive frames every --stride frames, full windows
only, full-frame resize, / 255) with the same model and weights:
- ours: extract_features.extract_video: each video decoded once front to back (PyAV), each frame
  resized once, --batch_size windows per forward (autocast with --precision on CUDA);
- baseline: VideoMAEv2's extract_tad_feature.py loop, written out: decord get_batch of each
  window's 16 frames, resize of that window, one window per fp32 forward.
Each prints one JSON line: windows/s and videos/s of wall time, windows and videos per CPU-second
(the process's CPU time, every thread: per core), the decode share of the wall time and of the
CPU time (everything but the forward: decoding, resizing, batching; the CPU share holds on a busy
machine), and for ours the largest difference from the baseline's features.

    OMP_NUM_THREADS=1 python bench/bench_extract.py --model vit_tiny_patch16_224 --input_size 112
    python bench/bench_extract.py --device cuda --model vit_base_patch16_224 --seconds 120 --precision bf16
"""
import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import extract_features as X  # noqa: E402
from modeling_finetune import MODELS  # noqa: E402
from training_loop import PRECISIONS  # noqa: E402


def write_long_video(path: str, seconds: float, fps: int, height: int, width: int, seed: int) -> None:
    """An H.264 video streamed to disk frame by frame (memory does not grow with its length)."""
    import av

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(int(seconds * fps)):
            frame = noise.copy()
            x, y = (7 * t) % (width - 32), (3 * t) % (height - 32)
            frame[y:y + 32, x:x + 32] = (255, 128 + t % 127, 40)
            frame = np.roll(frame, t % 5, axis=0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def baseline(path: str, model, input_size: int, stride: int, device: torch.device) -> dict:
    """VideoMAEv2's loop: a get_batch per window, resize of that window, batch-1 fp32 forward."""
    import decord

    start, model_s, model_cpu_s, parts = time.monotonic(), 0.0, 0.0, []
    vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    for first in range(0, len(vr) - 15, stride):
        clip = torch.from_numpy(vr.get_batch(np.arange(first, first + 16)).asnumpy()).permute(3, 0, 1, 2)
        clip = F.interpolate(clip.float() / 255, size=(input_size, input_size), mode="bilinear", align_corners=False)
        begin, begin_cpu = time.monotonic(), time.process_time()
        with torch.no_grad():
            parts.append(model.forward_features(clip[None].to(device)).cpu())
        model_s += time.monotonic() - begin
        model_cpu_s += time.process_time() - begin_cpu
    return {"features": torch.cat(parts).numpy(), "seconds": time.monotonic() - start, "model_seconds": model_s,
            "model_cpu_seconds": model_cpu_s}


def report(name: str, runs: list, extra: dict) -> None:
    seconds, cpu = sum(r["seconds"] for r in runs), sum(r["cpu_seconds"] for r in runs)
    windows = sum(r["windows"] for r in runs)
    print(json.dumps({"variant": name, **extra, "videos": len(runs), "windows": windows, "seconds": round(seconds, 3),
                      "cpu_seconds": round(cpu, 3), "windows_per_s": windows / seconds,
                      "videos_per_s": len(runs) / seconds, "windows_per_cpu_s": windows / cpu,
                      "videos_per_cpu_s": len(runs) / cpu,
                      "decode_share": 1 - sum(r["model_seconds"] for r in runs) / seconds,
                      "decode_cpu_share": 1 - sum(r["model_cpu_seconds"] for r in runs) / cpu}), flush=True)


def timed(fn, *args) -> tuple:
    """(fn(*args), wall seconds, CPU seconds of the whole process)."""
    wall, cpu = time.monotonic(), time.process_time()
    out = fn(*args)
    return out, time.monotonic() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vit_tiny_patch16_224", choices=sorted(MODELS))
    p.add_argument("--input_size", type=int, default=112)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS), help="ours only; the baseline is fp32")
    p.add_argument("--num_videos", type=int, default=2)
    p.add_argument("--seconds", type=float, default=12, help="length of each generated video")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--work_dir", default="/tmp/bench_extract")
    p.add_argument("--check", type=float, default=None,
                   help="also print a check line, ok when ours is within this of the baseline (exit 1 if not)")
    args = p.parse_args()
    device = torch.device(args.device)
    os.makedirs(args.work_dir, exist_ok=True)
    paths = []
    for i in range(args.num_videos):
        path = os.path.join(args.work_dir, f"long{i}_{args.seconds:g}s_{args.height}x{args.width}.mp4")
        if not os.path.exists(path):
            write_long_video(path, args.seconds, args.fps, args.height, args.width, seed=i)
        paths.append(path)
    torch.manual_seed(0)
    if args.check is not None:  # compare true fp32 on both sides; timings keep VideoMAEv2's defaults (TF32 convs)
        X.exact_fp32(device, "fp32")
    model = MODELS[args.model](img_size=args.input_size, all_frames=16, num_classes=0).eval().to(device)
    settings = SimpleNamespace(num_frames=16, sampling_rate=1, stride=args.stride, tail="drop", fps=None,
                               video_backend="pyav", decode_threads=1, batch_size=args.batch_size, features="pooled",
                               dtype="float32")
    prepare = X.frame_preparer("full", args.input_size, args.input_size, "none", device)
    extra = {"model": args.model, "input_size": args.input_size, "device": device.type, "torch_threads":
             torch.get_num_threads(), "video": f"{args.seconds:g}s {args.height}x{args.width} {args.fps}fps"}
    X.extract_video(paths[0], model, settings, prepare, device, args.precision)  # warm-up (allocator, kernels)
    ours, theirs, diff = [], [], 0.0
    for path in paths:
        (features, plan, facts), _, cpu = timed(X.extract_video, path, model, settings, prepare, device, args.precision)
        ours.append({**facts, "windows": len(plan), "cpu_seconds": cpu})
        reference, _, cpu = timed(baseline, path, model, args.input_size, args.stride, device)
        theirs.append({**reference, "windows": reference["features"].shape[0], "cpu_seconds": cpu})
        diff = max(diff, float(np.abs(features - reference["features"]).max()))
    report("ours", ours, {**extra, "batch_size": args.batch_size, "precision": args.precision,
                          "max_abs_diff_vs_baseline": diff})
    report("videomae_v2_loop", theirs, {**extra, "batch_size": 1, "precision": "fp32"})
    if args.check is not None:
        ok = diff <= args.check
        print(json.dumps({"check": "extract_features_equal", "ok": ok, "device": device.type, "model": args.model,
                          "precision": args.precision, "max_abs_diff": diff, "tolerance": args.check}))
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
