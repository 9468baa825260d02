"""A small synthetic action dataset written as real encoded videos, in the published CSV formats.

Each video shows one textured object crossing a slowly drifting textured background; the class is
the direction of the crossing (and, with 8 classes, its speed). Shape, colours, texture, size and
position are drawn independently of the label, and an optional distractor object oscillates in
place, so a single frame says almost nothing about the class: a model has to use motion.
With `--label shape` the class is instead the moving object's shape (disc, square, diamond) and
the direction is random: an appearance task on the same kind of videos.

    python -m datasets.synthetic --out /tmp/demo

writes, under --out:
    {train,val,test}/<class name>/<index>.mp4    one folder per class (csv-from-folders reads it)
    train.csv val.csv test.csv                   `relative/path label`, space-separated, no header
    pretrain.csv                                 every training video as `relative/path 0`
    classes.txt                                  class names, line i = label i
    dataset.json                                 {"hflip_changes_label": ...}: true for the motion labels,
                                                 whose left/right a flip swaps (fine-tuning reads it)
Everything is a function of --seed: each video draws from its own generator seeded by
(seed, split, index), so the same seed gives the same CSVs and the same decoded frames.
"""
import argparse
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets.generated import CODECS, DIRECTIONS, SPLITS, write_lines, write_video
from flags import ArgumentParser, DocHelpFormatter
from shutdown import run_tool

logger = logging.getLogger(__name__)

# Fraction of the free path the object covers during the video: the speed classes do not overlap.
SPEEDS = {"slow": (0.2, 0.4), "fast": (0.6, 0.9)}
ANY_SPEED = (0.35, 0.9)
NUM_CLASSES = (2, 4, 8)
SHAPES = ("disc", "square", "diamond")
LABEL_KINDS = ("motion", "shape")
TEXTURES = ("solid", "stripes", "checker")
# Objects are lit, the scene dim: every object is brighter than the background around it (a mean
# of at most 0.35 plus gratings of at most 4 x 2 x 0.08 = 0.64 in the worst place; typically
# under 0.5). With colours of both signs against the background, the direction of an edge's
# motion is a product of two linear responses (temporal and spatial change), which a ViT-Ti
# fine-tuned for 200 steps on the CPU does not find (val at chance); with one sign it is nearly
# linear and the same run reaches 90+ (FINETUNE.md, "On the demo data").
BACKGROUND_MEAN, BACKGROUND_AMPLITUDE, OBJECT_BRIGHTNESS = (0.15, 0.35), 0.08, (0.65, 1.0)


def class_names(num_classes: int) -> List[str]:
    """Names of the classes, in label order: directions, then direction x speed for 8 classes."""
    if num_classes not in NUM_CLASSES:
        raise ValueError(f"num_classes must be one of {NUM_CLASSES}, got {num_classes}")
    if num_classes == 8:
        return [f"{name}_{speed}" for name, _ in DIRECTIONS for speed in SPEEDS]
    return [name for name, _ in DIRECTIONS[:num_classes]]


def _class_motion(label: int, num_classes: int) -> Tuple[Tuple[int, int], Tuple[float, float]]:
    """(direction (dx, dy), range of path fraction covered) of class `label`."""
    if num_classes == 8:
        direction = DIRECTIONS[label // 2][1]
        return direction, list(SPEEDS.values())[label % 2]
    return DIRECTIONS[label][1], ANY_SPEED


def _background(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """A sum of coloured sine gratings drifting together at a slow random velocity: [T, H, W, 3]."""
    speed, angle = rng.uniform(0.1, 0.4), rng.uniform(0, 2 * np.pi)  # px / frame
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W] each
    t = np.arange(frames, dtype=np.float32)
    # sin(spatial + temporal) = sin(spatial) cos(temporal) + cos(spatial) sin(temporal): a product
    # of [H, W] and [T] factors, so the whole video is one small matrix product instead of T*H*W sines.
    spatial, temporal, colours = [], [], []
    for _ in range(4):
        freq, theta, phase = rng.uniform(1 / 32, 1 / 8), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        fx, fy = freq * math.cos(theta), freq * math.sin(theta)  # cycles / px
        arg_s = 2 * np.pi * (fx * xs + fy * ys) + phase  # [H, W]
        arg_t = -2 * np.pi * (fx * vx + fy * vy) * t  # [T], the drift
        spatial += [np.sin(arg_s), np.cos(arg_s)]
        temporal += [np.cos(arg_t), np.sin(arg_t)]
        colours += [rng.uniform(-BACKGROUND_AMPLITUDE, BACKGROUND_AMPLITUDE, 3)] * 2
    basis = np.stack(spatial).reshape(len(spatial), -1, 1) * np.array(colours, np.float32)[:, None, :]  # [2K, HW, 3]
    out = np.stack(temporal, axis=1) @ basis.reshape(len(spatial), -1)  # [T, HW * 3]
    out += np.tile(rng.uniform(*BACKGROUND_MEAN, 3).astype(np.float32), height * width)
    return out.reshape(frames, height, width, 3)


class _Appearance:
    """Random shape, size, two colours and texture of one object, independent of the label."""

    def __init__(self, rng: np.random.Generator, min_side: int):
        self.shape = SHAPES[rng.integers(len(SHAPES))]
        self.texture = TEXTURES[rng.integers(len(TEXTURES))]
        self.radius = rng.uniform(0.1, 0.18) * min_side
        self.colours = rng.uniform(*OBJECT_BRIGHTNESS, (2, 3)).astype(np.float32)
        self.period = rng.uniform(2.5, 6.0)  # texture cell size in px
        self.angle = rng.uniform(0, np.pi)
        # Half of the bounding box: the diamond reaches furthest along the axes.
        self.extent = 1.2 * self.radius

    def paint(self, canvas: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> None:
        """Draw the object centred at (cx[t], cy[t]) into canvas [T, H, W, 3], in place."""
        # Only the box the object sweeps over is touched: most of the frame is background.
        height, width = canvas.shape[1:3]
        x0, x1 = max(int(cx.min() - self.extent), 0), min(int(cx.max() + self.extent) + 2, width)
        y0, y1 = max(int(cy.min() - self.extent), 0), min(int(cy.max() + self.extent) + 2, height)
        canvas = canvas[:, y0:y1, x0:x1]
        u = np.arange(x0, x1)[None, None, :] - cx[:, None, None]  # [T, 1, w], object-local
        v = np.arange(y0, y1)[None, :, None] - cy[:, None, None]  # [T, h, 1]
        if self.shape == "disc":
            mask = u * u + v * v <= self.radius ** 2
        elif self.shape == "square":
            mask = np.maximum(np.abs(u), np.abs(v)) <= 0.85 * self.radius
        else:
            mask = np.abs(u) + np.abs(v) <= self.extent
        # The texture is fixed to the object, so it moves with it. [T, h, w] in {0, 1}
        if self.texture == "stripes":
            cell = np.floor((u * np.cos(self.angle) + v * np.sin(self.angle)) / self.period).astype(np.int64) % 2
        elif self.texture == "checker":
            cell = (np.floor(u / self.period).astype(np.int64) + np.floor(v / self.period).astype(np.int64)) % 2
        else:
            cell = np.zeros(mask.shape, dtype=np.int64)
        colour = self.colours[np.broadcast_to(cell, mask.shape)]  # [T, h, w, 3]
        np.copyto(canvas, colour, where=mask[..., None])


def render_clip(rng: np.random.Generator, label: int, num_classes: int = 4, frames: int = 48,
                height: int = 128, width: int = 160, distractor_prob: float = 0.0,
                label_kind: str = "motion") -> Tuple[np.ndarray, np.ndarray]:
    """Render one video of class `label` (a motion class, or with label_kind "shape" an index into SHAPES).

    Returns:
        frames uint8 [T, H, W, 3] and the moving object's centre per frame, float [T, 2] as (x, y).
    """
    if frames < 2:
        raise ValueError("a clip needs at least 2 frames to show motion")
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside [0, {num_classes})")
    canvas = _background(rng, frames, height, width)
    min_side = min(height, width)

    # The distractor wobbles back and forth around a random point: motion with no net direction.
    if rng.random() < distractor_prob:
        other = _Appearance(rng, min_side)
        centre = rng.uniform(other.extent, (width - other.extent, height - other.extent))
        amplitude, period = 0.15 * min_side, rng.uniform(6, 20)
        heading, phase = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        swing = amplitude * np.sin(2 * np.pi * np.arange(frames) / period + phase)  # [T]
        other.paint(canvas, centre[0] + swing * np.cos(heading), centre[1] + swing * np.sin(heading))

    obj = _Appearance(rng, min_side)
    if label_kind == "shape":  # the shape is the class, the direction any of the four
        obj.shape = SHAPES[label]
        (dx, dy), path_fraction = _class_motion(int(rng.integers(len(DIRECTIONS))), len(DIRECTIONS))
    else:
        (dx, dy), path_fraction = _class_motion(label, num_classes)
    along, across = (width, height) if dx else (height, width)
    free = along - 2 * obj.extent  # the path keeps the whole object inside the frame
    travel = rng.uniform(*path_fraction) * free
    start = rng.uniform(obj.extent, along - obj.extent - travel)
    progress = start + travel * np.arange(frames) / (frames - 1)  # [T], increasing
    if dx + dy < 0:
        progress = along - progress  # travel towards the origin
    side = np.full(frames, rng.uniform(obj.extent, across - obj.extent))
    cx, cy = (progress, side) if dx else (side, progress)
    obj.paint(canvas, cx, cy)
    video = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    return video, np.stack([cx, cy], axis=1)


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # A generator per video: its content does not depend on how many other videos are made.
    return np.random.default_rng([seed, SPLITS.index(split), index])


def make_dataset(out_dir: str, num_train: int = 80, num_val: int = 40, num_test: int = 40, frames: int = 48,
                 height: int = 128, width: int = 160, fps: int = 25, seed: int = 0, codec: str = "h264",
                 num_classes: int = 4, distractor_prob: float = 0.0,
                 label_kind: str = "motion") -> Dict[str, object]:
    """Write the videos and CSVs described in the module docstring.

    Labels cycle through the classes (video i has label i % num_classes), so every split is as
    balanced as its size allows.

    Returns:
        {"root", "train", "val", "test", "pretrain", "classes_file", "info_file": paths; "classes": names;
         "counts": videos per split}.
    """
    if seed < 0:
        raise ValueError("seed must be non-negative")
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind must be one of {LABEL_KINDS}, got {label_kind!r}")
    names = list(SHAPES) if label_kind == "shape" else class_names(num_classes)
    num_classes = len(names)
    ext = CODECS[codec][1]
    counts = {"train": num_train, "val": num_val, "test": num_test}
    result: Dict[str, object] = {"root": out_dir, "classes": names, "counts": counts}
    for split, count in counts.items():
        lines = []
        for index in range(count):
            label = index % num_classes
            rel = f"{split}/{names[label]}/{index:05d}{ext}"
            video, _ = render_clip(_split_rng(seed, split, index), label, num_classes, frames, height, width,
                                   distractor_prob, label_kind)
            os.makedirs(os.path.join(out_dir, os.path.dirname(rel)), exist_ok=True)
            write_video(os.path.join(out_dir, rel), video, fps, codec)
            lines.append(f"{rel} {label}\n")
        result[split] = write_lines(os.path.join(out_dir, f"{split}.csv"), lines)
        if split == "train":
            pretrain = [f"{line.rsplit(' ', 1)[0]} 0\n" for line in lines]
            result["pretrain"] = write_lines(os.path.join(out_dir, "pretrain.csv"), pretrain)
    result["classes_file"] = write_lines(os.path.join(out_dir, "classes.txt"), [f"{n}\n" for n in names])
    # A horizontal flip turns left_to_right into right_to_left: fine-tuning must not flip these.
    motion = label_kind == "motion"
    info = {"hflip_changes_label": motion,
            "why": "the labels are directions of motion: a horizontal flip swaps left and right" if motion
            else "the labels are shapes, which a horizontal flip keeps"}
    result["info_file"] = write_lines(os.path.join(out_dir, "dataset.json"), [json.dumps(info, indent=2) + "\n"])
    return result


def write_broken_files(out_dir: str) -> Dict[str, str]:
    """Write one example of each kind of unreadable input under `out_dir/broken/`.

    Kinds: missing (no file at the path), empty (0 bytes), truncated (the first 30% of a valid
    mp4, which cuts off the index the muxer writes last), garbage (random bytes named .mp4),
    too_short (a valid 3-frame video).

    Returns:
        kind -> path relative to `out_dir`.
    """
    broken = {kind: f"broken/{kind}.mp4" for kind in ("missing", "empty", "truncated", "garbage", "too_short")}
    os.makedirs(os.path.join(out_dir, "broken"), exist_ok=True)
    full = {kind: os.path.join(out_dir, rel) for kind, rel in broken.items()}
    if os.path.exists(full["missing"]):
        os.remove(full["missing"])
    open(full["empty"], "wb").close()
    rng = np.random.default_rng(0)
    video, _ = render_clip(rng, 0, frames=32, height=64, width=80)
    write_video(full["truncated"], video)
    with open(full["truncated"], "rb") as f:
        data = f.read()
    with open(full["truncated"], "wb") as f:
        f.write(data[: int(0.3 * len(data))])
    with open(full["garbage"], "wb") as f:
        f.write(rng.bytes(4096))
    write_video(full["too_short"], video[:3])
    return broken


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser("python -m datasets.synthetic", __doc__, formatter_class=DocHelpFormatter)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="dataset root; CSV paths are relative to it")
    g.add_argument("--codec", default="h264", choices=sorted(CODECS),
                   help="h264 writes .mp4, vp9 .webm, mpeg4 .avi")
    g.add_argument("--fps", type=int, default=25, help="frame rate written in the files")
    g = p.add_argument_group("size")
    g.add_argument("--num_train", type=int, default=80, help="training videos (classes take turns)")
    g.add_argument("--num_val", type=int, default=40, help="validation videos")
    g.add_argument("--num_test", type=int, default=40, help="test videos")
    g.add_argument("--frames", type=int, default=48, help="frames per video")
    g.add_argument("--height", type=int, default=128, help="even")
    g.add_argument("--width", type=int, default=160, help="even")
    g = p.add_argument_group("content")
    g.add_argument("--classes", type=int, default=4, choices=NUM_CLASSES,
                   help="2: horizontal directions, 4: all four directions, 8: directions x {slow, fast}")
    g.add_argument("--label", default="motion", choices=LABEL_KINDS,
                   help="what the class is: the motion (--classes) or the moving object's shape (3 classes)")
    g.add_argument("--distractor_prob", type=float, default=0.0,
                   help="probability that a video also shows an object wobbling in place")
    g.add_argument("--seed", type=int, default=0, help="what every video shows")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.time()
    result = make_dataset(args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                          frames=args.frames, height=args.height, width=args.width, fps=args.fps, seed=args.seed,
                          codec=args.codec, num_classes=args.classes, distractor_prob=args.distractor_prob,
                          label_kind=args.label)
    logger.info("wrote %d videos of %d classes to %s in %.1f s", sum(result["counts"].values()),
                len(result["classes"]), args.out, time.time() - start)


if __name__ == "__main__":
    run_tool(main, "python -m datasets.synthetic")
