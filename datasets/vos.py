"""Video object segmentation data: the DAVIS-2017 and YouTube-VOS layouts, read as clips of frames
and object-id masks.

DAVIS-2017 (trainval, 480p):
    ROOT/ImageSets/2017/{train,val}.txt          one video name per line
    ROOT/JPEGImages/480p/<video>/00000.jpg ...
    ROOT/Annotations/480p/<video>/00000.png ...  palette PNGs, pixel value = object id (0 background)
  A video's objects are the ids of its first annotation (DAVIS-2017 annotates every object there).
YouTube-VOS (2018 / 2019 train):
    ROOT/train/meta.json                         {"videos": {<video>: {"objects": {"1": {"category": ..}}}}}
    ROOT/train/JPEGImages/<video>/00000.jpg ...  (every 5th frame)
    ROOT/train/Annotations/<video>/00000.png ...
  A video's objects are those meta.json lists. With labels='category' (TimeTuning's YTVOS reading)
  object ids are replaced by the 1-based index of their category in the sorted list of all
  categories, so two objects of one category form one label.

Every frame needs its annotation (same file stem); a mask holding an id its video does not list,
a missing file, a non-palette PNG or a mask of another size than its frame stops with a message naming
the file. Id 255 is void, as in DAVIS: never an object, excluded from scoring. A frame or mask that
cannot be decoded (a truncated JPEG) raises UnreadableFrame naming it, so the evaluation can leave
that video out and say so. Clip frames are drawn as
TimeTuning's `SamplingMode.UNIFORM` does: `num_frames` distinct frames at random, in temporal
order (with repeats for shorter videos), from a generator seeded per video.
"""
import json
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DATA_SETS = ("davis", "ytvos")
YTVOS_LABELS = ("category", "object")
VOID = 255  # DAVIS' void / "don't care" pixels: not scored


def palette(n: int = 256) -> np.ndarray:
    """[n, 3] uint8 colours of the DAVIS / PASCAL VOC palette (id 0 black, 1 red, 2 green, ...)."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[i] = (r, g, b)
    return colours


class UnreadableFrame(ValueError):
    """A frame or annotation file that exists but cannot be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} cannot be read: {reason}")
        self.path, self.reason = path, reason


@dataclass
class VosVideo:
    name: str
    frames: List[str]  # JPEG paths in temporal order
    masks: List[str]  # the matching annotation PNGs
    object_ids: Tuple[int, ...]  # ids a mask may hold besides 0
    source: str  # where object_ids come from (for error messages)
    label_of: Optional[Dict[int, int]] = None  # object id -> scored label (None: the id itself)


def _frame_pairs(frame_dir: str, mask_dir: str) -> Tuple[List[str], List[str]]:
    if not os.path.isdir(frame_dir):
        raise FileNotFoundError(f"frame folder {frame_dir} does not exist")
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(frame_dir) if f.lower().endswith(".jpg"))
    if not stems:
        raise FileNotFoundError(f"no .jpg frames in {frame_dir}")
    masks = [os.path.join(mask_dir, s + ".png") for s in stems]
    missing = [m for m in masks if not os.path.isfile(m)]
    if missing:
        raise FileNotFoundError(f"missing annotation {missing[0]} for frame {os.path.join(frame_dir, stems[0])}"
                                f"... ({len(missing)} of {len(masks)} frames of this video lack one)")
    return [os.path.join(frame_dir, s + ".jpg") for s in stems], masks


def read_mask(path: str) -> np.ndarray:
    """[H, W] uint8 object ids of a palette (or greyscale) PNG."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(f"annotation {path} is a {image.mode} image: expected a palette PNG "
                                 f"whose pixel values are object ids")
            return np.array(image, dtype=np.uint8)
    except OSError as e:
        raise UnreadableFrame(f"annotation {path}", str(e)) from e


def read_frame(path: str) -> "Image.Image":
    """The RGB image of a frame file, fully decoded (PIL decodes lazily: a truncated file fails here,
    named, rather than later in a resize)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as e:
        raise UnreadableFrame(f"frame {path}", str(e)) from e


def davis_videos(root: str, split: str) -> List[VosVideo]:
    imageset = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
    if not os.path.isfile(imageset):
        raise FileNotFoundError(f"DAVIS split list {imageset} does not exist (--data_path is the DAVIS "
                                f"folder holding ImageSets/, JPEGImages/480p/, Annotations/480p/)")
    with open(imageset) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"{imageset} lists no videos")
    videos = []
    for name in names:
        frames, masks = _frame_pairs(os.path.join(root, "JPEGImages", "480p", name),
                                     os.path.join(root, "Annotations", "480p", name))
        ids = tuple(int(i) for i in np.unique(read_mask(masks[0])) if i not in (0, VOID))
        videos.append(VosVideo(name, frames, masks, ids, f"the first annotation {masks[0]}"))
    return videos


def ytvos_videos(root: str, split: str, labels: str = "category") -> List[VosVideo]:
    if labels not in YTVOS_LABELS:
        raise ValueError(f"labels {labels!r}: expected one of {YTVOS_LABELS}")
    meta_path = os.path.join(root, split, "meta.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"YouTube-VOS {meta_path} does not exist (--data_path is the folder "
                                f"holding {split}/meta.json, {split}/JPEGImages/, {split}/Annotations/)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)["videos"]
        objects = {v: {int(i): o["category"] for i, o in meta[v]["objects"].items()} for v in sorted(meta)}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{meta_path} is not a YouTube-VOS meta.json ({type(e).__name__}: {e}): expected "
                         f'{{"videos": {{<video>: {{"objects": {{"<id>": {{"category": ...}}}}}}}}}}') from e
    categories = sorted({c for objs in objects.values() for c in objs.values()})
    index = {c: i + 1 for i, c in enumerate(categories)}
    videos = []
    for name, objs in objects.items():
        frames, masks = _frame_pairs(os.path.join(root, split, "JPEGImages", name),
                                     os.path.join(root, split, "Annotations", name))
        label_of = {i: index[c] for i, c in objs.items()} if labels == "category" else None
        videos.append(VosVideo(name, frames, masks, tuple(sorted(objs)), f"{meta_path} (video {name})", label_of))
    return videos


def sample_indices(num_available: int, num_frames: int, rng: random.Random) -> List[int]:
    """TimeTuning's uniform sampling: distinct random frames in order, with repeats if too few."""
    if num_available >= num_frames:
        return sorted(rng.sample(range(num_available), num_frames))
    return sorted(rng.choices(range(num_available), k=num_frames))


def check_ids(mask: np.ndarray, video: VosVideo, path: str) -> None:
    unknown = sorted(set(np.unique(mask).tolist()) - {0, VOID} - set(video.object_ids))
    if unknown:
        raise ValueError(f"annotation {path} holds object id(s) {unknown} that {video.source} does not "
                         f"list (known: {list(video.object_ids)})")


def read_clip(video: VosVideo, indices: Sequence[int], size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(frames [T, size, size, 3] uint8 resized bilinearly, scored labels [T, size, size] uint8
    resized nearest, VOID kept), TimeTuning's square resize of the whole frame.

    Raises ValueError naming a mask whose size is not its frame's (it would be stretched onto other
    pixels), UnreadableFrame naming a file that does not decode."""
    from PIL import Image
    frames, labels = [], []
    lookup = None
    if video.label_of is not None:
        lookup = np.zeros(256, dtype=np.uint8)
        lookup[VOID] = VOID
        for i, label in video.label_of.items():
            lookup[i] = label
    for i in indices:
        image = read_frame(video.frames[i])
        mask = read_mask(video.masks[i])
        if mask.shape != (image.height, image.width):
            raise ValueError(f"annotation {video.masks[i]} is {mask.shape[1]}x{mask.shape[0]}, its frame "
                             f"{video.frames[i]} {image.width}x{image.height}: masks must have their frame's size")
        frames.append(np.array(image.resize((size, size), Image.Resampling.BILINEAR)))
        check_ids(mask, video, video.masks[i])
        mask = np.array(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
        labels.append(lookup[mask] if lookup is not None else mask)
    return np.stack(frames), np.stack(labels)


def vos_videos(data_set: str, root: str, split: str, ytvos_labels: str = "category") -> List[VosVideo]:
    if data_set == "davis":
        return davis_videos(root, split)
    if data_set == "ytvos":
        return ytvos_videos(root, split, ytvos_labels)
    raise ValueError(f"data set {data_set!r}: expected one of {DATA_SETS}")
