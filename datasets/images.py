"""Image benchmarks for video encoders: ImageNet-1K folders and CIFAR-100 read as clips of one image.

Items have VideoClipDataset's layout (datasets/video_dataset.py), so `collate_clips`, the feature
extraction and the probes work unchanged:
    video   [V, C, T, H, W] float, ImageNet-normalised: T copies of the one (cropped) image
    label, index, segment, crop  [V] long  (segment always 0; crop numbers the test crops)
    bad     list of (path, reason)         (unreadable images met while producing this item)

How many frames: T = the clip length the encoder was built for (--num_frames, 16 for the paper's
ViT-B), the image repeated. A video ViT cuts its input into 2-frame tubes, so T must be at least
the tube length, and its position table is sized for num_frames / tubelet x patches, so T equal to
the pretraining clip length gives the positions and tubes the model was trained on (fewer copies
would need another position table; a static clip of the training length is what the model has
seen of a motionless scene). This is the published practice for video models on images:
V-JEPA's image probes repeat the image to the model's clip length (facebookresearch/jepa
configs/evals/vitl16_in1k.yaml: frames_per_clip 16, tag "in1k-16f"; facebookresearch/vjepa2
configs/eval/vitl/in1k.yaml: img_as_video_nframes 16). We found no statement of the frame count
in SIGMA's paper or code (QUVA-Lab/SIGMA ships no image-probe script), so this follows V-JEPA.

Augmentation, as the standard image linear probe: train = random resized crop (area 0.08-1,
aspect 3/4-4/3, antialiased) and a horizontal flip; val = resize the short side to
`short_side_size` and centre crop (give 256 for 224 crops: the usual 0.875 ratio; CIFAR's 32x32
images are enlarged the same way); test = `test_num_crop` crops along the long side.

Layouts: ImageNet `root/{train,val}/<wnid>/*.JPEG` (labels = sorted folder names of train/, or
the order of a class-list file whose first token per line is the folder name, e.g.
LOC_synset_mapping.txt, checked against the folders); CIFAR-100 the official python archive
`root/cifar-100-python/{train,test,meta}` (fine labels), whose pickles are read by an unpickler
that only rebuilds numpy arrays (a pickle can run code; the official archive needs nothing else).
"""
import importlib
import logging
import multiprocessing
import os
import pickle
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from datasets import transforms as T
from datasets.annotations import AnnotationError, Sample
from datasets.video_dataset import ClipConfig

logger = logging.getLogger(__name__)

# --data_set -> (classes, frame sampling, flip), the shape of video_dataset.DATA_SETS.
IMAGE_DATA_SETS = {"ImageNet": (1000, "repeat", True), "CIFAR-100": (100, "repeat", True)}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MODES = ("train", "val", "test")


class ImageError(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# ----------------------------------------------------------------------------------------------
# ImageNet-style folders

def _class_folders(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not names:
        loose = [f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]
        hint = f" but {len(loose)} loose images: sort them into {folder}/<class>/" if loose else ""
        raise AnnotationError(f"{folder}: no class folders{hint}")
    return names


def image_folder_classes(root: str, class_list: Optional[str] = None) -> List[str]:
    """Class names in label order: the class-list file's order, else the sorted folders of root/train.

    Raises:
        AnnotationError naming the class-list file when its names and the folders differ.
    """
    folders = _class_folders(os.path.join(root, "train"))
    if not class_list:
        return folders
    if not os.path.isfile(class_list):
        raise FileNotFoundError(f"class list not found: {class_list}")
    with open(class_list) as f:
        names = [line.split()[0] for line in f if line.strip()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    missing, extra = sorted(set(names) - set(folders)), sorted(set(folders) - set(names))
    if dupes or missing or extra:
        parts = [f"listed twice: {dupes[:5]}" if dupes else "",
                 f"{len(missing)} listed without a folder in {root}/train: {missing[:5]}" if missing else "",
                 f"{len(extra)} folders not listed: {extra[:5]}" if extra else ""]
        raise AnnotationError(f"class list {class_list} does not match the folders: "
                              + "; ".join(p for p in parts if p))
    return names


def read_image_folder(root: str, split: str, classes: Sequence[str]) -> List[Sample]:
    """(path, label) of every image of root/split/<class>/, classes in label order."""
    folder = os.path.join(root, split)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [d for d in _class_folders(folder) if d not in index]
    if unknown:
        raise AnnotationError(f"{folder}: {len(unknown)} class folders not among the {len(classes)} classes "
                              f"of {root}/train (or the class list): {unknown[:5]}")
    samples, empty = [], []
    for name in classes:
        sub = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(sub) if f.lower().endswith(IMAGE_EXTENSIONS)) if os.path.isdir(sub) else []
        if not files:
            empty.append(name)
        samples += [Sample(os.path.join(sub, f), index[name]) for f in files]
    if empty:
        logger.warning("%s: %d classes without images, e.g. %s", folder, len(empty), empty[:3])
    if not samples:
        raise AnnotationError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


def decode_image(path: str) -> torch.Tensor:
    """uint8 [3, H, W] RGB of a JPEG / PNG file (grey, palette and CMYK converted).

    Pillow (a torchvision dependency) decodes: torchvision's own image decoding is deprecated
    since 0.29, and Pillow reads the content whatever the extension says (ImageNet's train set
    has PNG and CMYK files named .JPEG).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))  # [H, W, 3]
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(path, f"cannot decode ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# CIFAR-100's python archive

_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype"),
                  ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays)")


def _load_cifar_pickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-100 file not found: {path} (the official cifar-100-python archive)")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()  # written by Python 2: str -> bytes
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise AnnotationError(f"{path}: not a CIFAR-100 pickle ({e})") from None
    if not isinstance(obj, dict):
        raise AnnotationError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar100_folder(root: str) -> str:
    """root itself when it holds train/test/meta, else root/cifar-100-python."""
    return root if os.path.isfile(os.path.join(root, "meta")) else os.path.join(root, "cifar-100-python")


def read_cifar100(root: str, split: str) -> Tuple[np.ndarray, List[int], List[str]]:
    """(images uint8 [N, 32, 32, 3], fine labels, the 100 fine class names) of "train" or "test"."""
    folder = cifar100_folder(root)
    batch, meta = _load_cifar_pickle(os.path.join(folder, split)), _load_cifar_pickle(os.path.join(folder, "meta"))
    path = os.path.join(folder, split)
    for key, obj in (("data", batch), ("fine_labels", batch), ("fine_label_names", meta)):
        if key not in obj:
            raise AnnotationError(f"{path if obj is batch else os.path.join(folder, 'meta')}: no {key!r} entry")
    data, labels = np.asarray(batch["data"]), [int(v) for v in batch["fine_labels"]]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise AnnotationError(f"{path}: data {data.dtype} {data.shape} with {len(labels)} labels, expected "
                              f"uint8 [N, 3072] with N labels")
    bad = [v for v in labels if not 0 <= v < len(names)]
    if bad:
        raise AnnotationError(f"{path}: labels {sorted(set(bad))[:5]} outside [0, {len(names)})")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels, names  # rows are R, G, B planes


# ----------------------------------------------------------------------------------------------
# Sources and the dataset

class ImageFiles:
    """Images on disk: `samples` of (path, label)."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)
        self.labels = [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        return decode_image(self.samples[i].path)  # uint8 [3, H, W]


class ImageArray:
    """Images in memory: uint8 [N, H, W, 3] and their labels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]):
        self.images, self.labels = images, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)  # uint8 [3, H, W]


def image_split(data_set: str, root: str, split: str, class_list: Optional[str] = None):
    """The "train" or "val" split of an IMAGE_DATA_SETS benchmark (CIFAR-100's val is its test batch)."""
    if data_set == "CIFAR-100":
        images, labels, _ = read_cifar100(root, "train" if split == "train" else "test")
        return ImageArray(images, labels)
    if data_set == "ImageNet":
        return ImageFiles(read_image_folder(root, split, image_folder_classes(root, class_list)))
    raise ValueError(f"not an image data set: {data_set!r} (one of {sorted(IMAGE_DATA_SETS)})")


class ImageClipDataset(torch.utils.data.Dataset):
    """Clips of `clip.num_frames` copies of one image per item (module docstring).

    Args:
        source: ImageFiles or ImageArray.
        mode: "train" (random resized crop, flip), "val" (centre crop) or "test" (test_num_crop crops).
        clip: num_frames, input_size and short_side_size are used.
        scale, ratio: the train crop's area and aspect-ratio ranges.
        flip: horizontal flips in train mode.
    """

    def __init__(self, source, mode: str, clip: ClipConfig = ClipConfig(), scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, test_num_crop: int = 1,
                 seed: int = 0, max_retries: int = 20):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if clip.num_frames < 1 or test_num_crop < 1:
            raise ValueError("num_frames and test_num_crop must be >= 1")
        self.source, self.mode, self.clip = source, mode, clip
        self.scale, self.ratio, self.flip = scale, ratio, flip
        self.num_views = test_num_crop if mode == "test" else 1
        self.seed, self.max_retries = seed, max_retries
        self._epoch = multiprocessing.Value("q", 0, lock=False)  # reaches DataLoader workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int) -> Dict[str, object]:
        seed = np.random.SeedSequence([self.seed, self._epoch.value, item]).generate_state(1)[0]
        rng = torch.Generator().manual_seed(int(seed))
        bad: List[Tuple[str, str]] = []
        index = item
        for _ in range(self.max_retries + 1):
            try:
                image = self.source.load(index)  # uint8 [3, H, W]
                break
            except ImageError as e:
                bad.append((e.path, e.reason))
                index = int(torch.randint(len(self.source), (1,), generator=rng))
        else:
            raise RuntimeError(f"no readable image in {len(bad)} tries; examples: {bad[:5]}")
        views = [self._repeat(v) for v in self._views(image[None], rng)]  # [C, T, H, W] each
        V = len(views)
        return {"video": torch.stack(views), "label": torch.full((V,), self.source.labels[index], dtype=torch.long),
                "index": torch.full((V,), index, dtype=torch.long), "segment": torch.zeros(V, dtype=torch.long),
                "crop": torch.arange(V) if self.mode == "test" else torch.zeros(V, dtype=torch.long), "bad": bad}

    def _views(self, frame: torch.Tensor, rng: torch.Generator) -> List[torch.Tensor]:
        """Crops of frame uint8 [1, C, H, W], each uint8 [1, C, size, size]."""
        size = self.clip.input_size
        if self.mode == "train":
            crop = T.random_resized_crop(frame, size, rng, scale=self.scale, ratio=self.ratio, antialias=True)
            return [T.horizontal_flip(crop, rng) if self.flip else crop]
        frame = T.resize_short_side(frame, self.clip.short_side_size, antialias=True)
        if self.mode == "val":
            return [T.center_crop(frame, size)]
        return T.spatial_crops(frame, size, self.num_views)

    def _repeat(self, crop: torch.Tensor) -> torch.Tensor:
        """uint8 [1, C, s, s] -> normalised float [C, T, s, s], the frame repeated T times."""
        return T.to_normalized_float(crop).expand(-1, self.clip.num_frames, -1, -1)
