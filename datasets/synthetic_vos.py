"""A synthetic video object segmentation set with exact masks, in the DAVIS-2017 or YouTube-VOS layout.

Each video shows 1-3 textured objects (discs and boxes, each its own colour and stripe texture)
moving on straight paths, bouncing off the borders and occluding one another (a later object is
drawn on top) over a textured background. The annotation of every frame is the exact object-id
map of what was drawn, written as a palette PNG like the real sets; objects start apart, so each
one is in the first annotation (DAVIS-2017's rule).

    python -m datasets.synthetic_vos --out data/vos_davis --layout davis
    python -m datasets.synthetic_vos --out data/vos_ytvos --layout ytvos

DAVIS: ImageSets/2017/{train,val}.txt, JPEGImages/480p/<video>/%05d.jpg, Annotations/480p/<video>/%05d.png.
YouTube-VOS: train/meta.json (objects with categories 'disc' / 'box'), train/JPEGImages/<video>/,
train/Annotations/<video>/ with YouTube-VOS's frame names (00000, 00005, ...).
Everything is a function of --seed.
"""
import argparse
import json
import logging
import os
from typing import Dict, List

import numpy as np

from datasets.vos import palette
from flags import ArgumentParser, DocHelpFormatter
from shutdown import run_tool

logger = logging.getLogger(__name__)
SHAPES = ("disc", "box")


def _texture(rng: np.random.Generator, height: int, width: int, colour: np.ndarray, cells: int) -> np.ndarray:
    """[H, W, 3] float: `colour` modulated by smooth noise (cells x cells, upsampled) and stripes."""
    noise = rng.uniform(-1, 1, (cells, cells))
    ys = np.linspace(0, cells - 1, height).round().astype(int)
    xs = np.linspace(0, cells - 1, width).round().astype(int)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 9)
    yy, xx = np.mgrid[:height, :width]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    shade = 0.25 * noise[ys][:, xs] + 0.15 * stripes
    return np.clip(colour[None, None] * (1 + shade[..., None]), 0, 255)


def _objects(rng: np.random.Generator, height: int, width: int) -> List[Dict]:
    count = int(rng.integers(1, 4))
    slots = rng.permutation(4)[:count]  # quadrants: objects start apart
    objects = []
    for i, slot in enumerate(slots):
        radius = rng.uniform(0.12, 0.2) * min(height, width)
        cy = (slot // 2 + 0.5) * height / 2
        cx = (slot % 2 + 0.5) * width / 2
        speed = rng.uniform(0.03, 0.08) * min(height, width)
        angle = rng.uniform(0, 2 * np.pi)
        colour = rng.uniform(40, 255, 3)
        objects.append({"id": i + 1, "shape": SHAPES[int(rng.integers(2))], "radius": radius, "pos": [cy, cx],
                        "vel": [speed * np.sin(angle), speed * np.cos(angle)],
                        "texture": _texture(rng, height, width, colour, 6)})
    return objects


def _step(obj: Dict, height: int, width: int) -> None:
    for axis, limit in ((0, height), (1, width)):
        obj["pos"][axis] += obj["vel"][axis]
        if not obj["radius"] <= obj["pos"][axis] <= limit - obj["radius"]:
            obj["vel"][axis] *= -1
            obj["pos"][axis] = float(np.clip(obj["pos"][axis], obj["radius"], limit - obj["radius"]))


def render_video(rng: np.random.Generator, frames: int, height: int, width: int):
    """(frames [T, H, W, 3] uint8, masks [T, H, W] uint8 object ids, objects' shapes {id: shape})."""
    background = _texture(rng, height, width, rng.uniform(60, 200, 3), 10)
    objects = _objects(rng, height, width)
    yy, xx = np.mgrid[:height, :width]
    video = np.empty((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        image = background.copy()
        for obj in objects:  # later objects occlude earlier ones
            dy, dx = yy - obj["pos"][0], xx - obj["pos"][1]
            if obj["shape"] == "disc":
                inside = dy ** 2 + dx ** 2 <= obj["radius"] ** 2
            else:
                inside = (np.abs(dy) <= obj["radius"]) & (np.abs(dx) <= obj["radius"])
            image[inside] = obj["texture"][inside]
            masks[t][inside] = obj["id"]
            _step(obj, height, width)
        video[t] = image.round().astype(np.uint8)
    return video, masks, {o["id"]: o["shape"] for o in objects}


def write_video(video: np.ndarray, masks: np.ndarray, frame_dir: str, mask_dir: str, stems: List[str]) -> None:
    from PIL import Image
    os.makedirs(frame_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    colours = palette().reshape(-1).tolist()
    for frame, mask, stem in zip(video, masks, stems):
        Image.fromarray(frame).save(os.path.join(frame_dir, stem + ".jpg"), quality=95)
        png = Image.fromarray(mask)  # "L"; putpalette makes it "P"
        png.putpalette(colours)
        png.save(os.path.join(mask_dir, stem + ".png"))


def make_vos_dataset(out: str, layout: str, num_videos: int = 4, frames: int = 12, height: int = 48,
                     width: int = 64, seed: int = 0) -> Dict[str, object]:
    """Write the set; returns {"root", "videos": [names], "split"} (DAVIS: every video in val.txt and
    the first half in train.txt; YouTube-VOS: the train split)."""
    if layout not in ("davis", "ytvos"):
        raise ValueError(f"layout {layout!r}: expected 'davis' or 'ytvos'")
    names = [f"video{i:03d}" for i in range(num_videos)]
    meta = {"videos": {}}
    for i, name in enumerate(names):
        video, masks, shapes = render_video(np.random.default_rng([seed, i]), frames, height, width)
        if layout == "davis":
            write_video(video, masks, os.path.join(out, "JPEGImages", "480p", name),
                        os.path.join(out, "Annotations", "480p", name), [f"{t:05d}" for t in range(frames)])
        else:
            stems = [f"{5 * t:05d}" for t in range(frames)]
            write_video(video, masks, os.path.join(out, "train", "JPEGImages", name),
                        os.path.join(out, "train", "Annotations", name), stems)
            meta["videos"][name] = {"objects": {str(k): {"category": v, "frames": stems} for k, v in shapes.items()}}
    if layout == "davis":
        os.makedirs(os.path.join(out, "ImageSets", "2017"), exist_ok=True)
        for split, listed in (("train", names[:max(1, num_videos // 2)]), ("val", names)):
            with open(os.path.join(out, "ImageSets", "2017", f"{split}.txt"), "w") as f:
                f.write("".join(n + "\n" for n in listed))
    else:
        with open(os.path.join(out, "train", "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    logger.info("wrote %d %s videos of %d frames (%dx%d) to %s", num_videos, layout, frames, width, height, out)
    return {"root": out, "videos": names, "split": "val" if layout == "davis" else "train"}


def main(argv=None) -> None:
    p = ArgumentParser("python -m datasets.synthetic_vos", __doc__, formatter_class=DocHelpFormatter)
    p.add_argument("--out", required=True, help="the data set's root folder (python -m evals.segmentation --data_path)")
    p.add_argument("--layout", choices=("davis", "ytvos"), default="davis",
                   help="DAVIS-2017 or YouTube-VOS folders and annotation files")
    p.add_argument("--videos", type=int, default=8, help="videos written")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--height", type=int, default=96, help="frame height in pixels")
    p.add_argument("--width", type=int, default=128, help="frame width in pixels")
    p.add_argument("--seed", type=int, default=0, help="what every video shows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_vos_dataset(args.out, args.layout, args.videos, args.frames, args.height, args.width, args.seed)


if __name__ == "__main__":
    run_tool(main, "python -m datasets.synthetic_vos")
