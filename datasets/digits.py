"""Moving handwritten digits: a CPU-sized learning-signal benchmark written as real encoded videos.

The digits are scikit-learn's bundled copy of the UCI handwritten digits (1,797 8x8 scans written
by 43 people), upsampled and moved across a small dark frame. Every video has three labels:
    digit      the class of the (full-brightness) digit, 10 classes: appearance
    direction  where it moves (left_to_right, right_to_left, top_to_bottom, bottom_to_top): motion
    speed      slow or fast, 2 classes
With --digits_per_video N > 1 the video also shows N - 1 dimmer distractor digits of other classes,
each moving its own random way; the labels are the bright digit's. The digit images are split
into disjoint train / val / test pools (per class, by --split_seed), so validation videos show
scans the training videos never do.

    python -m datasets.digits --out data/digits

writes, under --out:
    videos/{train,val,test}/<index>.mp4          the videos (one set, shared by the labellings)
    {digit,direction,speed}/{train,val,test}.csv `videos/... label` lines, relative to --out
    {digit,direction,speed}/classes.txt          class names, line i = label i
    pretrain.csv                                 every training video as `videos/... 0`
Evaluate a labelling with `--data_path OUT/digit --data_root OUT`. Everything is a function of
--seed and --split_seed: each video draws from its own generator seeded by (seed, split, index),
so the same seeds give the same files, byte for byte (see datasets.generated.CODECS).
"""
import argparse
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets.generated import CODECS, DIRECTIONS, SPLITS, write_lines, write_video
from flags import ArgumentParser, DocHelpFormatter
from shutdown import run_tool

logger = logging.getLogger(__name__)

LABELLINGS = ("digit", "direction", "speed")
DIGIT_NAMES = tuple(str(d) for d in range(10))
SPEED_NAMES = ("slow", "fast")
# Fraction of the free path the digit covers during the video, per speed class (no overlap).
SPEED_RANGES = ((0.25, 0.5), (0.7, 1.0))
POOL_FRACTIONS = (0.6, 0.2, 0.2)  # of each class's scans: train, val, test
DISTRACTOR_GAIN = 0.45  # distractor brightness relative to the labelled digit


def load_digit_images() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digit scans as float32 [N, 8, 8] in [0, 1], and their classes [N]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the moving-digits data set needs scikit-learn (the digits ship inside it): "
                         "pip install -r requirements-test.txt, or pip install scikit-learn") from None
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_pools(targets: np.ndarray, split_seed: int) -> Dict[str, List[np.ndarray]]:
    """Disjoint scan indices per split and class: split -> [indices of class 0, ..., class 9]."""
    rng = np.random.default_rng([split_seed, 1797])
    pools: Dict[str, List[np.ndarray]] = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(targets == digit))
        cut = np.cumsum([round(f * len(idx)) for f in POOL_FRACTIONS[:-1]])
        for split, part in zip(SPLITS, np.split(idx, cut)):
            pools[split].append(part)
    return pools


def upsample(image: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a [h, w] image to [side, side] (pixel centres aligned, edges clamped)."""
    h, w = image.shape
    ys = np.clip((np.arange(side) + 0.5) * h / side - 0.5, 0, h - 1)
    xs = np.clip((np.arange(side) + 0.5) * w / side - 0.5, 0, w - 1)
    rows = np.stack([np.interp(ys, np.arange(h), image[:, j]) for j in range(w)], axis=1)  # [side, w]
    return np.stack([np.interp(xs, np.arange(w), rows[i]) for i in range(side)]).astype(np.float32)


def _path(rng: np.random.Generator, direction: Tuple[int, int], speed: int, frames: int, frame_side: int,
          digit_side: int) -> np.ndarray:
    """Top-left corner per frame, int [T, 2] as (x, y), moving along `direction` inside the frame."""
    dx, dy = direction
    free = frame_side - digit_side
    travel = rng.uniform(*SPEED_RANGES[speed]) * free
    start = rng.uniform(0, free - travel)
    progress = start + travel * np.arange(frames) / (frames - 1)  # [T], increasing
    if dx + dy < 0:
        progress = free - progress  # towards the origin
    side = np.full(frames, rng.uniform(0, free))
    xy = np.stack([progress, side] if dx else [side, progress], axis=1)
    return np.rint(xy).astype(np.int64)


def render_digits(rng: np.random.Generator, images: Sequence[np.ndarray], direction: int, speed: int,
                  frames: int = 32, size: int = 48) -> np.ndarray:
    """One video: images[0] at full brightness moving along DIRECTIONS[direction] at `speed`,
    the others dimmer, each on its own random direction and speed.

    Returns:
        uint8 [T, size, size, 3].
    """
    background = rng.uniform(0.0, 0.25, 3).astype(np.float32)
    canvas = np.broadcast_to(background, (frames, size, size, 3)).copy()
    canvas += rng.normal(0.0, 0.02, (1, size, size, 1)).astype(np.float32)  # fixed sensor grain
    layers = [(images[0], direction, speed, 1.0)]
    layers += [(img, int(rng.integers(len(DIRECTIONS))), int(rng.integers(len(SPEED_NAMES))), DISTRACTOR_GAIN)
               for img in images[1:]]
    for image, d, s, gain in reversed(layers):  # the labelled digit is painted last, on top
        side = int(rng.integers(size * 3 // 8, size // 2 + 1))
        ink = upsample(image, side)[None, :, :, None]  # [1, side, side, 1] in [0, 1]
        colour = gain * rng.uniform(0.6, 1.0, 3).astype(np.float32)
        xy = _path(rng, DIRECTIONS[d][1], s, frames, size, side)
        for t, (x, y) in enumerate(xy):
            region = canvas[t, y:y + side, x:x + side]
            region += ink[0] * (colour - region)  # alpha-blend the ink over what is there
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)


def make_digits_dataset(out_dir: str, num_train: int = 1000, num_val: int = 400, num_test: int = 200,
                        frames: int = 32, size: int = 48, digits_per_video: int = 1, fps: int = 25,
                        seed: int = 0, split_seed: Optional[int] = None, codec: str = "h264") -> Dict[str, object]:
    """Write the videos and CSVs described in the module docstring.

    Video i of a split has direction i % 4 and digit (i // 4) % 10, so every split is balanced
    in both and the two are independent; the speed and the scan of that digit are drawn.

    Returns:
        {"root": out_dir, "pretrain": path, "counts": videos per split,
         labelling: {"dir", "train", "val", "test", "classes"} for each of LABELLINGS}.
    """
    if seed < 0 or (split_seed is not None and split_seed < 0):
        raise ValueError("seeds must be non-negative")
    if not 1 <= digits_per_video <= 10:
        raise ValueError(f"digits_per_video must be in [1, 10], got {digits_per_video}")
    if size % 2 or frames < 2:
        raise ValueError(f"need an even frame size and at least 2 frames, got {size}, {frames}")
    images, targets = load_digit_images()
    pools = split_pools(targets, seed if split_seed is None else split_seed)
    ext = CODECS[codec][1]
    counts = {"train": num_train, "val": num_val, "test": num_test}
    names = {"digit": DIGIT_NAMES, "direction": tuple(n for n, _ in DIRECTIONS), "speed": SPEED_NAMES}
    result: Dict[str, object] = {"root": out_dir, "counts": counts}
    for labelling in LABELLINGS:
        folder = os.path.join(out_dir, labelling)
        os.makedirs(folder, exist_ok=True)
        result[labelling] = {"dir": folder, "classes": list(names[labelling]),
                             "classes_file": write_lines(os.path.join(folder, "classes.txt"),
                                                          [f"{n}\n" for n in names[labelling]])}
    for split, count in counts.items():
        if count == 0:  # no empty CSV: the drivers fall back to val.csv when test.csv is absent
            continue
        os.makedirs(os.path.join(out_dir, "videos", split), exist_ok=True)
        lines: Dict[str, List[str]] = {labelling: [] for labelling in LABELLINGS}
        for index in range(count):
            rng = np.random.default_rng([seed, SPLITS.index(split), index])
            direction, digit = index % len(DIRECTIONS), (index // len(DIRECTIONS)) % 10
            speed = int(rng.integers(len(SPEED_NAMES)))
            others = rng.permutation([d for d in range(10) if d != digit])[:digits_per_video - 1]
            scans = [images[rng.choice(pools[split][d])] for d in [digit, *others]]
            rel = f"videos/{split}/{index:05d}{ext}"
            write_video(os.path.join(out_dir, rel), render_digits(rng, scans, direction, speed, frames, size),
                        fps, codec)
            for labelling, label in zip(LABELLINGS, (digit, direction, speed)):
                lines[labelling].append(f"{rel} {label}\n")
        for labelling in LABELLINGS:
            result[labelling][split] = write_lines(os.path.join(out_dir, labelling, f"{split}.csv"),
                                                    lines[labelling])
        if split == "train":
            result["pretrain"] = write_lines(os.path.join(out_dir, "pretrain.csv"),
                                              [f"{line.rsplit(' ', 1)[0]} 0\n" for line in lines["digit"]])
    return result


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser("python -m datasets.digits", __doc__, formatter_class=DocHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root: one folder per labelling, CSV paths relative to it")
    p.add_argument("--codec", default="h264", choices=sorted(CODECS), help="h264 writes .mp4, vp9 .webm, mpeg4 .avi")
    p.add_argument("--fps", type=int, default=25, help="frame rate written in the files")
    g = p.add_argument_group("size")
    g.add_argument("--num_train", type=int, default=1000, help="training videos")
    g.add_argument("--num_val", type=int, default=400, help="validation videos")
    g.add_argument("--num_test", type=int, default=200, help="test videos")
    g.add_argument("--frames", type=int, default=32, help="frames per video (8 frames at rate 4 fill 32)")
    g.add_argument("--size", type=int, default=48, help="frame side in pixels, even")
    g = p.add_argument_group("content")
    g.add_argument("--digits_per_video", type=int, default=1,
                   help="1 labelled digit plus N - 1 dimmer distractor digits of other classes")
    g.add_argument("--seed", type=int, default=0, help="what every video shows")
    g.add_argument("--split_seed", type=int, default=None,
                   help="which scans go to which split (default: --seed)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.time()
    result = make_digits_dataset(args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                                 frames=args.frames, size=args.size, digits_per_video=args.digits_per_video,
                                 fps=args.fps, seed=args.seed, split_seed=args.split_seed, codec=args.codec)
    logger.info("wrote %d videos to %s in %.1f s (labellings: %s)", sum(result["counts"].values()), args.out,
                time.time() - start, ", ".join(LABELLINGS))


if __name__ == "__main__":
    run_tool(main, "python -m datasets.digits")
