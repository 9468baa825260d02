"""Features of whole (untrimmed) videos: a frozen backbone on sliding windows, one array per video.

For every video of a folder or list file, windows over the whole video (feature_windows.py: start
every --stride frames, --num_frames frames --sampling_rate apart, optionally after resampling to
--fps; --tail pad covers the last frames with one window repeating the last frame, drop keeps full
windows only), each window through the backbone, and OUT/<video id>.npy [num_windows, C] (the layout
ActionFormer / TriDet feature loaders read), plus OUT/records/<video id>.json (frames, fps, every
window's start frame, start and centre time, feature shape, weights and settings) and OUT/index.json
(all records and failures). Every file is written to a temporary name and renamed.

Each video is decoded once, front to back (datasets/frame_stream.py); each frame is resized and
normalised once however many windows share it, and only the frames still needed are held;
--batch_size windows go through the model per forward (autocast on CUDA). Under torchrun or Slurm
(several tasks) each process takes its own share of the videos (largest files spread first) and
never waits for another. --resume skips videos whose record exists with the same settings. An
unreadable video is named in the log, listed in OUT/failures_rank<R>.tsv and skipped. SIGTERM or
SIGUSR1 (Slurm's preemption warning) ends the process after the video in progress, with exit code
75 (the launchers then requeue the job, which resumes).

Presets reproduce OpenGVLab/VideoMAEv2's extract_tad_feature.py (commit
fecbcfe73e03e841904eb81039b28b88c59acead): --preset thumos14 is 16 consecutive frames every 4
frames, full windows only, every frame resized to 224x224 (float bilinear, no antialiasing) and
divided by 255 with no mean / std, fp32, features of forward_features (fc_norm of the token mean);
--preset fineaction the same every 16 frames. Flags given with a preset override it.

    python extract_features.py --data_path videos/ --finetune vit_b_k710_ft.pth \\
        --model vit_base_patch16_224 --preset thumos14 --output_dir features/th14
"""
import argparse
import json
import logging
import os
import signal
import time
from fractions import Fraction
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from datasets import transforms as T
from datasets.decoding import BACKENDS, DEFAULT_BACKEND, VideoError
from datasets.frame_stream import iter_frames, probe
from distributed import detect_launch, setup_logging
from feature_store import finished, record_of, remove_partial_files, temporary_name, write_atomic, write_index
from feature_windows import TAILS, WindowPlan, plan_windows, stream_clips
from flags import ArgumentParser, add_encoder_flags, add_run_flags, check_flags, resolve_precision
from modeling_finetune import MODELS, VisionTransformer
from progress import Progress
from runtime import REQUEUE_EXIT_CODE
from shutdown import run_driver
from training_loop import PRECISIONS
from weights import backbone_kwargs, load_pretrained_weights, pooling_for_frozen_features, read_pretrained

logger = logging.getLogger("sigma")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
VIDEOMAE_V2 = dict(num_frames=16, sampling_rate=1, tail="drop", fps=None, resize="full", input_size=224,
                   normalize="none", precision="fp32", features="pooled")
PRESETS = {"thumos14": {**VIDEOMAE_V2, "stride": 4}, "fineaction": {**VIDEOMAE_V2, "stride": 16}}
# The flags that change a video's features: a record made with other values is not resumed from.
SETTINGS = ("model", "finetune", "model_key", "model_prefix", "num_frames", "sampling_rate", "stride", "fps",
            "tail", "resize", "input_size", "short_side_size", "normalize", "features", "dtype", "precision",
            "video_backend")


def get_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser("extract_features.py", "sliding-window features of whole videos")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", required=True, help="folder of videos, or a file whose lines start with a video path")
    g.add_argument("--data_root", default="", help="prefix of relative paths in a list file (default: its folder)")
    g = p.add_argument_group("model")
    add_encoder_flags(g, MODELS, default="vit_base_patch16_224",
                      finetune_help="weights: ours, official SIGMA / VideoMAE, transformers VideoMAE or VideoMAEv2 "
                                    "(folder, .pth, .bin or .safetensors), with or without a classifier (default: none: random weights)")
    g = p.add_argument_group("windows")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="VideoMAEv2's extract_tad_feature.py settings (module docstring) (default: none, the flags as given)")
    g.add_argument("--num_frames", type=int, default=16, help="frames per window")
    g.add_argument("--sampling_rate", type=int, default=1, help="frames between two frames of a window")
    g.add_argument("--stride", type=int, default=4, help="frames between two window starts")
    g.add_argument("--fps", type=Fraction, default=None,
                   help="resample every video to this rate first (e.g. 30000/1001) (default: none, every frame at its own rate)")
    g.add_argument("--tail", default="pad", choices=TAILS,
                   help="pad: one more window repeating the last frame covers the end; drop: full windows only")
    g = p.add_argument_group("pixels and features")
    g.add_argument("--resize", default="full", choices=("full", "short_side"),
                   help="full: the whole frame to input_size x input_size (float bilinear, as VideoMAEv2); "
                        "short_side: short side to --short_side_size, then a centre crop (our validation resize)")
    g.add_argument("--input_size", type=int, default=224, help="side of the square frames the model sees")
    g.add_argument("--short_side_size", type=int, default=224, help="short side before the centre crop (--resize short_side)")
    g.add_argument("--normalize", default="imagenet", choices=("imagenet", "none"),
                   help="imagenet: our models' mean / std; none: only / 255 (VideoMAEv2's extractor)")
    g.add_argument("--features", default="pooled", choices=("pooled", "tokens", "map"),
                   help="pooled: [W, C] as the backbone pools; tokens: [W, N, C] after the blocks; "
                        "map: [W, C, h, w], the tokens averaged over each window's time")
    g.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="storage type of the arrays")
    g = p.add_argument_group("run")
    g.add_argument("--batch_size", type=int, default=32, help="windows per forward")
    g.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=BACKENDS[:3], help="video decoder (DATASET.md)")
    g.add_argument("--decode_threads", type=int, default=1, help="decoder threads per video")
    g.add_argument("--resume", action="store_true", help="skip videos already extracted with the same settings")
    add_run_flags(p, output_dir="output/features", precision=True, config=False)  # writes no config.json
    args = p.parse_args(argv)
    if args.preset:  # the preset's values become defaults: flags given on the command line still win
        p.set_defaults(**PRESETS[args.preset])
        args = p.parse_args(argv)
    check_flags(p, args, {name: (lambda v: v >= 1, ">= 1") for name in
                          ("num_frames", "sampling_rate", "stride", "input_size", "short_side_size", "batch_size",
                           "decode_threads")})
    check_flags(p, args, {"fps": (lambda v: v > 0, "> 0"),
                          "finetune": (bool, "given: the weights to extract features with")})
    if args.resize == "short_side" and args.short_side_size < args.input_size:
        p.error(f"--short_side_size {args.short_side_size} must be >= --input_size {args.input_size}")
    return args


def list_videos(data_path: str, data_root: str = "") -> List[Tuple[str, str]]:
    """(video id, path) of every video: the files of a folder with a video extension, or the first
    field of every line of a list file (CSV or space-separated, relative paths under data_root)."""
    if os.path.isdir(data_path):
        paths = sorted(os.path.join(data_path, n) for n in os.listdir(data_path)
                       if n.lower().endswith(VIDEO_EXTENSIONS))
    elif os.path.isfile(data_path):
        root = data_root or os.path.dirname(os.path.abspath(data_path))
        with open(data_path) as f:
            fields = [line.replace(",", " ").split()[0] for line in f if line.strip()]
        paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in fields]
    else:
        raise SystemExit(f"--data_path {data_path}: no such folder or list file")
    videos, seen = [], {}
    for path in paths:
        video_id = os.path.splitext(os.path.basename(path))[0]
        if video_id in seen:
            raise SystemExit(f"{data_path}: two videos would write {video_id}.npy: {seen[video_id]} and {path}")
        seen[video_id] = path
        videos.append((video_id, path))
    if not videos:
        raise SystemExit(f"--data_path {data_path}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
    return videos


def shard(videos: List[Tuple[str, str]], rank: int, world_size: int) -> List[Tuple[str, str]]:
    """This rank's videos: sorted by file size (largest first), then dealt round-robin, so every
    rank gets a similar amount of video and the same listing gives every rank the same split."""
    def size(path: str) -> int:
        return os.path.getsize(path) if os.path.isfile(path) else 0
    ordered = sorted(videos, key=lambda v: (-size(v[1]), v[0]))
    return ordered[rank::world_size]


def load_backbone(args: argparse.Namespace, device: torch.device) -> VisionTransformer:
    """The frozen backbone of --finetune, pooling as its weights were trained to be read (fc_norm
    of the token mean where they have one, else the final norm's token mean; a transformers /
    VideoMAEv2 config's own pooling), without a classifier."""
    weights = read_pretrained(args.finetune)
    if weights.hub is not None:  # a transformers / VideoMAEv2 folder declares its own architecture
        model = VisionTransformer(**{**backbone_kwargs(args.finetune), "img_size": args.input_size,
                                     "all_frames": args.num_frames, "num_classes": 0})
    else:
        model = MODELS[args.model](img_size=args.input_size, all_frames=args.num_frames, num_classes=0,
                                   use_mean_pooling=pooling_for_frozen_features(weights, args.model_key))
    load_pretrained_weights(model, weights, args.model_key, args.model_prefix)
    return model.eval().to(device)


def frame_preparer(resize: str, input_size: int, short_side_size: int, normalize: str, device: torch.device):
    """uint8 [n, H, W, 3] frames -> float32 [n, 3, input_size, input_size] on `device`."""
    mean = torch.tensor(T.IMAGENET_DEFAULT_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(T.IMAGENET_DEFAULT_STD, device=device).view(1, 3, 1, 1)

    def prepare(frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2)  # [n, 3, H, W]
        if resize == "full":  # as VideoMAEv2: to [0, 1] floats, then bilinear without antialiasing
            x = x.to(device, non_blocking=True).float().div_(255)
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        else:  # our validation resize (cv2 INTER_LINEAR on uint8, on the CPU) and centre crop
            x = T.center_crop(T.resize_short_side(x, short_side_size), input_size)
            x = x.to(device, non_blocking=True).float().div_(255)
        return (x - mean) / std if normalize == "imagenet" else x

    return prepare


def window_features(model: VisionTransformer, clips: torch.Tensor, kind: str) -> torch.Tensor:
    """Features of clips [B, 3, T, H, W]: pooled [B, C], tokens [B, N, C] or map [B, C, h, w]."""
    if kind == "pooled":
        return model.forward_features(clips)
    tokens = model.forward_tokens(clips)  # [B, N, C], N = t * h * w in (t, h, w) order
    if kind == "tokens":
        return tokens
    B, _, frames, height, width = clips.shape
    grid = (frames // model.tubelet_size, height // model.patch_size, width // model.patch_size)
    return tokens.reshape(B, *grid, -1).mean(1).permute(0, 3, 1, 2)  # [B, C, h, w]


def exact_fp32(device: torch.device, precision: str) -> None:
    """fp32 on CUDA means fp32: no TF32 in convolutions (cuDNN's default) or matmuls, so that features
    match a CPU run (and each other across batch sizes) to about 1e-5 rather than 1e-3."""
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def extract_video(path: str, model: VisionTransformer, args: argparse.Namespace, prepare, device: torch.device,
                  precision: str, out: Optional[str] = None) -> Tuple[np.ndarray, WindowPlan, Dict[str, Any]]:
    """(features [W, ...] in --dtype, the window plan, facts for the record) of one video.

    With `out`, the features are written batch by batch into a memory-mapped temporary .npy beside it,
    renamed to `out` when complete (memory stays bounded even for all tokens of an hour of video), and
    returned memory-mapped read-only."""
    start = time.monotonic()
    info = probe(path, args.video_backend)
    plan = plan_windows(info.num_frames, info.fps, window=args.num_frames, sampling_rate=args.sampling_rate,
                        stride=args.stride, tail=args.tail, target_fps=args.fps)
    if not len(plan):
        span = (args.num_frames - 1) * args.sampling_rate + 1
        raise VideoError(path, f"{plan.timeline_frames} frames, shorter than one window ({span}); "
                               f"--tail pad would give it one")
    frames = iter_frames(path, plan.needed().__contains__, int(plan.frames.max()), args.video_backend,
                         args.decode_threads)
    dtype, model_s, model_cpu_s = PRECISIONS[precision], 0.0, 0.0
    features: Optional[np.ndarray] = None
    tmp = temporary_name(out) if out else None

    def store(first: int, batch: torch.Tensor) -> None:
        nonlocal features
        batch = batch.cpu().numpy()  # waits for that batch on the GPU
        if features is None:
            shape = (len(plan), *batch.shape[1:])
            features = (np.lib.format.open_memmap(tmp, mode="w+", dtype=args.dtype, shape=shape) if tmp
                        else np.empty(shape, dtype=args.dtype))
        features[first:first + batch.shape[0]] = batch

    try:
        # A batch is copied back after the next one is launched: on CUDA the decoding of the next
        # frames (CPU) overlaps the forward in flight.
        previous = None
        for first, clips in stream_clips(frames, plan, args.batch_size, prepare):
            begin, begin_cpu = time.monotonic(), time.process_time()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                launched = (first, window_features(model, clips, args.features).float())
            if previous is not None:
                store(*previous)
            previous = launched
            model_s += time.monotonic() - begin
            model_cpu_s += time.process_time() - begin_cpu
        begin, begin_cpu = time.monotonic(), time.process_time()
        store(*previous)
        model_s += time.monotonic() - begin
        model_cpu_s += time.process_time() - begin_cpu
        if tmp:
            features.flush()
            os.replace(tmp, out)
            features = np.load(out, mmap_mode="r")
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)  # a video that failed half-way leaves nothing
    facts = {"frames": info.num_frames, "fps": float(info.fps) if info.fps else None, "height": info.height,
             "width": info.width, "seconds": time.monotonic() - start, "model_seconds": model_s,
             "model_cpu_seconds": model_cpu_s}
    return features, plan, facts


def main(args: argparse.Namespace) -> None:
    launch = detect_launch(os.environ)
    os.makedirs(os.path.join(args.output_dir, "records"), exist_ok=True)
    setup_logging(launch.rank, os.path.join(args.output_dir, "extract.log"))
    if launch.world_size > 1:
        logger.info("%s: this process takes its own share of the videos, no process group", launch.describe())
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank % max(1, torch.cuda.device_count()))
    precision = resolve_precision(args.precision, device)
    exact_fp32(device, precision)
    settings = {k: (str(v) if isinstance(v, Fraction) else v) for k, v in vars(args).items() if k in SETTINGS}
    settings["finetune"] = os.path.abspath(args.finetune)
    settings["precision"] = precision
    mine = shard(list_videos(args.data_path, args.data_root), launch.rank, launch.world_size)
    remove_partial_files(args.output_dir, [v[0] for v in mine])
    todo = [v for v in mine if not (args.resume and finished(args.output_dir, v[0], settings))]
    logger.info("%d videos for this process, %d already extracted", len(mine), len(mine) - len(todo))
    model = load_backbone(args, device)
    prepare = frame_preparer(args.resize, args.input_size, args.short_side_size, args.normalize, device)
    stop: List[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))  # finish the video in progress
                for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        extract_all(todo, model, args, prepare, device, precision, settings, launch.rank, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    write_index(args.output_dir)


def extract_all(todo: List[Tuple[str, str]], model: VisionTransformer, args: argparse.Namespace, prepare,
                device: torch.device, precision: str, settings: Dict[str, Any], rank: int, stop: List[int]) -> None:
    """Extract and write every (video id, path) of `todo`; unreadable ones go to OUT/failures_rank<rank>.tsv.
    SystemExit(REQUEUE_EXIT_CODE) before the next video once `stop` holds a signal."""
    failures_path = os.path.join(args.output_dir, f"failures_rank{rank}.tsv")
    failures: List[Tuple[str, str, str]] = []
    windows = 0
    with Progress(len(todo), "features", unit="videos", enabled=rank == 0) as progress:
        for video_id, path in todo:
            if stop:
                logger.warning("signal %d: stopping before %s; rerun with --resume to go on", stop[0], path)
                raise SystemExit(REQUEUE_EXIT_CODE)
            try:
                features, plan, facts = extract_video(path, model, args, prepare, device, precision,
                                                      out=os.path.join(args.output_dir, f"{video_id}.npy"))
            except VideoError as e:
                logger.warning("skipping %s: %s", path, e.reason)
                failures.append((video_id, path, e.reason))
                rows = "".join("\t".join(row) + "\n" for row in failures)
                write_atomic(failures_path, lambda f: f.write(rows.encode()))
                progress.update()
                continue
            record = json.dumps(record_of(video_id, path, features, plan, {**facts, "rank": rank}, settings))
            write_atomic(os.path.join(args.output_dir, "records", f"{video_id}.json"),
                         lambda f: f.write(record.encode()))
            windows += len(plan)
            progress.update()
    if not failures and os.path.exists(failures_path):
        os.remove(failures_path)  # a resumed run that read every video: no failure is left
    logger.info("%d videos, %d windows written to %s; %d failed%s", len(todo) - len(failures), windows,
                args.output_dir, len(failures), f" (listed in {failures_path})" if failures else "")

if __name__ == "__main__":
    run_driver(main, get_args())
