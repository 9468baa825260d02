"""One video dataset for every mode and every annotation format.

Each item is one decode of one video (one temporal segment in test mode) and returns V views
stacked on a leading axis, so `collate_clips` can flatten them into the batch:
    video   [V, C, T, H, W] float, ImageNet-normalised
    mask    [V, N] bool                      (pretrain only; True = masked)
    label, index, segment, crop  [V] long    (index: position of the video in the annotation list)
    target  [V, ...] float                   (with `targets`: multi-hot labels, counts)
    bad     list of (path, reason)           (unreadable files met while producing this item)
With `gpu_augment` (pretraining only) an item holds the decoded clip once instead of "video":
    frames  [T, C, H, W] uint8               (the decode, before any crop)
    boxes   [V, 4] long                      (top, left, height, width of each view's crop)
and the crops, resizes and normalisation run batched on the training device (datasets/gpu_augment.py),
giving the same "video" as the worker path. The boxes are drawn from the item's generator in the
order the worker path draws its crops, so the masks drawn after them are the same too.
V is `num_sample` in pretrain/train (several augmentations of one decode), 1 in val, and
`test_num_crop` in test. Everything random comes from a generator seeded by (seed, epoch, item),
so a resumed run sees the same clips and masks whatever the number of workers.

Files decord cannot decode are retried with PyAV. Unreadable videos (missing, empty,
undecodable, truncated, shorter than `min_video_frames`) are replaced by another video drawn from the same generator, and reported in `bad`;
`BadSampleTracker` logs each file once, counts each once per epoch and stops the run when they
exceed `max_bad_fraction`; a file decord reads but the chosen backend cannot is reported as a reader
problem naming decord. `BadSampleTracker.left_out()` lists the files a run left out.
"""
import logging
import math
import multiprocessing
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from datasets import transforms as T
from datasets.annotations import Sample
from datasets.decoding import DEFAULT_BACKEND, READER_PROBLEM, DecodeOptions, VideoError, read_video
from datasets.frame_indices import dense_indices, linspace_indices, segment_indices
from distributed import gather_objects, ranks_with
from masking_generator import MASKS
from shutdown import RunError

logger = logging.getLogger(__name__)

MODES = ("pretrain", "train", "val", "test")

# --data_set -> (classes, frame sampling, horizontal flip). SSv2's labels name directions ("left to
# right"), so it is never flipped and samples one frame per segment, as in the official code.
# GYM99, FX-S1 and UB-S1 read the official FineGym lists (datasets/gym.py), the others CSV files.
DATA_SETS = {"Kinetics-400": (400, "dense", True), "SSV2": (174, "segment", False), "UCF101": (101, "dense", True),
             "HMDB51": (51, "dense", True), "Diving48": (48, "dense", True), "GYM99": (99, "dense", True),
             "FX-S1": (11, "dense", True), "UB-S1": (15, "dense", True), "custom": (None, "dense", True),
             "Charades": (157, "dense", True), "UCFRep": (1, "segment", True)}


@dataclass(frozen=True)
class ClipConfig:
    """What a clip is: frames, their spacing, and the spatial size given to the model."""
    num_frames: int = 16
    sampling_rate: int = 4
    sampling: str = "dense"  # "dense" (Kinetics, pretraining) or "segment" (SSv2)
    input_size: int = 224
    short_side_size: int = 224  # val/test: short side resized to this before cropping


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; pretraining uses only `pretrain_augmentation`.

    Fine-tuning follows the official order: RandAugment on the whole decoded frame, then the
    random resized crop (plain bilinear on the normalised float clip), flip, random erasing.
    `crop_first` crops first (uint8, plain bilinear, rounded) and runs RandAugment on the crop:
    cheaper, but rotate/shear/translate then act on the crop, not the frame (FINETUNE.md).
    """
    pretrain_augmentation: str = "multi_scale_crop"  # or "resize"
    scale: Tuple[float, float] = (0.25, 1.0)  # random resized crop area range (official fine-tuning)
    ratio: Tuple[float, float] = (0.75, 1.3333)  # its aspect ratio range, as the official literal
    flip: bool = True  # off for SSv2, where left/right is the label
    auto_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1"
    crop_first: bool = False
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1


@dataclass(frozen=True)
class MaskConfig:
    """Pretraining masks: their kind, ratio and token grid (T/tubelet, H/patch, W/patch), which is
    the model's own (`model.encoder.grid_size`)."""
    mask_type: str = "tube"
    mask_ratio: float = 0.9
    grid: Optional[Tuple[int, int, int]] = None


class VideoClipDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample], mode: str, clip: ClipConfig = ClipConfig(),
                 augment: AugmentConfig = AugmentConfig(), mask: MaskConfig = MaskConfig(),
                 num_sample: int = 1, test_num_segment: int = 1, test_num_crop: int = 1,
                 video_backend: str = DEFAULT_BACKEND, num_threads: int = 1, seed: int = 0,
                 min_video_frames: int = 4, max_retries: int = 20, targets: Optional[torch.Tensor] = None,
                 gpu_augment: bool = False, decode: DecodeOptions = DecodeOptions(),
                 test_segment_cache: bool = True):
        """targets: [len(samples), ...] float per-video targets beyond the class label (Charades'
        multi-hot labels, UCFRep's counts), returned as "target" [V, ...].
        gpu_augment: items hold the uint8 decode and the crop boxes, not "video" (pretraining only).
        decode: how the PyAV backend decodes (datasets/decoding.py DecodeOptions; short_side scales
        in the decoder, which changes pixel values).
        test_segment_cache: in test mode with several segments, decode segment s and every later
        segment of the video in one pass and serve the later ones (the next items) from memory."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if gpu_augment and mode != "pretrain":
            raise ValueError(f"gpu_augment is for pretraining only, not mode {mode!r}: fine-tuning's RandAugment, "
                             f"crops and random erasing run in the DataLoader workers")
        if clip.sampling not in ("dense", "segment"):
            raise ValueError(f"sampling must be 'dense' or 'segment', got {clip.sampling!r}")
        if min(num_sample, test_num_segment, test_num_crop) < 1:
            raise ValueError("num_sample, test_num_segment and test_num_crop must be >= 1")
        self.samples = list(samples)
        if targets is not None and len(targets) != len(self.samples):
            raise ValueError(f"{len(targets)} targets for {len(self.samples)} samples")
        self.targets = targets
        self.mode, self.clip, self.augment, self.mask = mode, clip, augment, mask
        self.num_views = {"pretrain": num_sample, "train": num_sample, "val": 1, "test": test_num_crop}[mode]
        self.test_num_segment = test_num_segment if mode == "test" else 1
        self.video_backend, self.num_threads = video_backend, num_threads
        self.seed, self.min_video_frames, self.max_retries = seed, min_video_frames, max_retries
        self.rand_augment = (T.RandAugment(augment.auto_augment, fill=T.OFFICIAL_FILL)
                             if mode == "train" and augment.auto_augment else None)
        if mode == "pretrain" and mask.grid is None:
            raise ValueError("pretraining needs MaskConfig(grid=...): the model's token grid (model.encoder.grid_size)")
        self.mask_grid = mask.grid
        self.gpu_augment = gpu_augment
        # Shared with DataLoader workers (also persistent ones): set_epoch reaches them.
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self.decode, self.test_segment_cache = decode, test_segment_cache
        # (path, sorted frame indices, their frames uint8 [U, C, H, W], segment -> its indices):
        # the segments of the last video decoded, one video per process at most.
        self._segments: Optional[Tuple[str, List[int], torch.Tensor, Dict[int, List[int]]]] = None

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def __len__(self) -> int:
        return len(self.samples) * self.test_num_segment

    def __getitem__(self, item: int) -> Dict[str, object]:
        video_index, segment = divmod(item, self.test_num_segment)
        seed = np.random.SeedSequence([self.seed, self._epoch.value, item]).generate_state(1)[0]
        rng = torch.Generator().manual_seed(int(seed))
        bad: List[Tuple[str, str]] = []
        for _ in range(self.max_retries + 1):
            try:
                frames = self._decode(self.samples[video_index].path, segment, rng)  # uint8 [T, C, H, W]
                break
            except VideoError as e:
                bad.append((e.path, e.reason))
                video_index = int(torch.randint(len(self.samples), (1,), generator=rng))
        else:
            raise RuntimeError(f"no readable video in {len(bad)} tries; examples: {bad[:5]}")
        V = self.num_views
        if self.gpu_augment:
            out = {"frames": frames, "boxes": self._crop_boxes(*frames.shape[-2:], rng)}  # boxes [V, 4]
        else:
            out = {"video": torch.stack(self._views(frames, rng))}  # [V, C, T, H, W]
        out.update({
            "label": torch.full((V,), self.samples[video_index].label, dtype=torch.long),
            "index": torch.full((V,), video_index, dtype=torch.long),
            "segment": torch.full((V,), segment, dtype=torch.long),
            "crop": torch.arange(V) if self.mode == "test" else torch.zeros(V, dtype=torch.long),
            "bad": bad,
        })
        if self.targets is not None:
            out["target"] = self.targets[video_index].expand(V, *self.targets.shape[1:]).clone()
        if self.mode == "pretrain":
            out["mask"] = MASKS[self.mask.mask_type](V, self.mask_grid, self.mask.mask_ratio, generator=rng)
        return out

    def _decode(self, path: str, segment: int, rng: torch.Generator) -> torch.Tensor:
        if self.test_num_segment > 1 and self.test_segment_cache:
            return self._decode_segment(path, segment)
        return read_video(path, self.video_backend, lambda reader: self._decode_frames(reader, segment, rng),
                          self.num_threads, self.decode)

    def _decode_segment(self, path: str, segment: int) -> torch.Tensor:
        """Test segment `segment` of `path`: uint8 [T, C, H, W], the same frames as decoding it alone.

        Items are video * segments + segment, and the eval loader gives each worker consecutive
        items, so the segments of one video come one after another: on a miss this segment and
        every later one are decoded in one pass (frames shared between segments decoded once, a
        keyframe seek across gaps), and the later segments are served from memory."""
        if self._segments is None or self._segments[0] != path or segment not in self._segments[3]:
            self._segments = None  # free the previous video before decoding the next

            def read(reader) -> Tuple[List[int], torch.Tensor, Dict[int, List[int]]]:
                by_segment = {s: self._indices(reader, s, None) for s in range(segment, self.test_num_segment)}
                union = sorted(set().union(*by_segment.values()))
                return union, reader.get_frames(union), by_segment  # frames: uint8 [U, C, H, W]

            self._segments = (path, *read_video(path, self.video_backend, read, self.num_threads, self.decode))
        _, union, frames, by_segment = self._segments
        position = {index: k for k, index in enumerate(union)}
        clip = frames[[position[i] for i in by_segment[segment]]]  # [T, C, H, W]
        if segment == self.test_num_segment - 1:
            self._segments = None  # the video's last segment: nothing more to serve
        return clip

    def _indices(self, reader, segment: int, rng: Optional[torch.Generator]) -> List[int]:
        """The clip's frame indices in an open video (test mode draws nothing from `rng`)."""
        n = reader.num_frames
        if n < self.min_video_frames:
            raise VideoError(reader.path, f"too short: {n} frames (< {self.min_video_frames})")
        mode = "train" if self.mode == "pretrain" else self.mode
        if self.clip.sampling == "dense" and self.mode == "train":
            return linspace_indices(n, self.clip.num_frames, self.clip.sampling_rate, rng)
        if self.clip.sampling == "dense":
            return dense_indices(n, self.clip.num_frames, self.clip.sampling_rate, mode, rng,
                                 segment, self.test_num_segment)
        return segment_indices(n, self.clip.num_frames, mode, rng, segment, self.test_num_segment)

    def _decode_frames(self, reader, segment: int, rng: torch.Generator) -> torch.Tensor:
        """The clip's frames of an open video: uint8 [T, C, H, W]."""
        return reader.get_frames(self._indices(reader, segment, rng))

    def _views(self, frames: torch.Tensor, rng: torch.Generator) -> List[torch.Tensor]:
        size = self.clip.input_size
        if self.mode == "pretrain":
            crop = (T.multi_scale_crop if self.augment.pretrain_augmentation == "multi_scale_crop"
                    else lambda clip, s, g: T.resize(clip, s))
            return [T.to_normalized_float(crop(frames, size, rng)) for _ in range(self.num_views)]
        if self.mode == "train":
            return [self._train_view(frames, rng) for _ in range(self.num_views)]
        frames = T.resize_short_side(frames, self.clip.short_side_size)
        if self.mode == "val":
            return [T.to_normalized_float(T.center_crop(frames, size))]
        return [T.to_normalized_float(c) for c in T.spatial_crops(frames, size, self.num_views)]

    def _crop_boxes(self, height: int, width: int, rng: torch.Generator) -> torch.Tensor:
        """[V, 4] long (top, left, height, width): the pretraining views' crops, drawn from `rng`
        exactly as `_views` draws them (one multi_scale_crop per view; 'resize' draws nothing)."""
        if self.augment.pretrain_augmentation == "multi_scale_crop":
            boxes = [T.multi_scale_crop_params(height, width, self.clip.input_size, rng) for _ in range(self.num_views)]
        else:  # the whole frame, warped to a square
            boxes = [(0, 0, height, width)] * self.num_views
        return torch.tensor(boxes, dtype=torch.long)

    def _train_view(self, frames: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        size, scale, ratio = self.clip.input_size, self.augment.scale, self.augment.ratio
        if self.augment.crop_first:  # RandAugment on the small crop: cheaper, not the official order
            clip = T.random_resized_crop(frames, size, rng, scale=scale, ratio=ratio, antialias=False)
            if self.augment.flip:
                clip = T.horizontal_flip(clip, rng)
            if self.rand_augment is not None:
                clip = self.rand_augment(clip, rng)
            video = T.to_normalized_float(clip)  # [C, T, size, size]
        else:  # official: RandAugment on the decoded frames, then crop the float clip
            clip = self.rand_augment(frames, rng) if self.rand_augment is not None else frames
            video = T.random_resized_crop_float(clip, size, rng, scale=scale, ratio=ratio)  # [C, T, size, size]
            if self.augment.flip:
                video = T.horizontal_flip(video, rng)
        if self.augment.reprob > 0:
            video = T.random_erasing(video, rng, probability=self.augment.reprob, mode=self.augment.remode,
                                     max_count=self.augment.recount)
        return video


def collate_clips(batch: List[Dict[str, object]]) -> Dict[str, object]:
    """Flatten the views of every item into the batch; gather the bad-file reports.

    Items of a `gpu_augment` dataset keep one decode each: "frames" become one uint8
    [B, T, H_max, W_max, C] tensor (zero-padded at the bottom and right, so the loader pins one
    fixed-shape tensor; channels last, the decoders' own memory order, so each clip is copied
    without a transpose), "frame_size" [B, 2] the real (H, W) of each, and "frame_index" [B*V]
    the item of each view (of "boxes" [B*V, 4])."""
    out: Dict[str, object] = {k: _cat([item[k] for item in batch]) for k in batch[0] if k not in ("bad", "frames")}
    if "frames" in batch[0]:
        out["frames"], out["frame_size"] = _pad_frames([item["frames"] for item in batch])
        views = torch.tensor([len(item["boxes"]) for item in batch])
        out["frame_index"] = torch.repeat_interleave(torch.arange(len(batch)), views)
    out["bad"] = [b for item in batch for b in item["bad"]]
    out["num_items"] = len(batch)
    return out


def _batch_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """torch.empty; inside a DataLoader worker in shared memory, so the batch reaches the main process
    without the copy into shared memory that pickling a private tensor makes (default_collate does the
    same): 8 float clips of 16x224x224 are 77 MB a batch."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(*shape)


def _cat(tensors: List[torch.Tensor]) -> torch.Tensor:
    """torch.cat along dim 0 into a _batch_empty tensor."""
    shape = (sum(t.shape[0] for t in tensors), *tensors[0].shape[1:])
    return torch.cat(tensors, out=_batch_empty(shape, tensors[0].dtype))


def _pad_frames(clips: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 [T, C, H_i, W_i] clips -> (uint8 [B, T, max H, max W, C] zero-padded, [B, 2] long real sizes)."""
    sizes = torch.tensor([clip.shape[-2:] for clip in clips], dtype=torch.long)  # [B, 2]
    h, w = sizes.max(0).values.tolist()
    t, c = clips[0].shape[:2]
    out = _batch_empty((len(clips), t, h, w, c), torch.uint8)  # every byte written once
    for b, clip in enumerate(clips):
        clip_h, clip_w = clip.shape[-2:]
        out[b, :, :clip_h, :clip_w] = clip.permute(0, 2, 3, 1)  # [T, H_i, W_i, C]
        out[b, :, clip_h:] = 0
        out[b, :, :clip_h, clip_w:] = 0
    return out, sizes


class TooManyBadSamples(RunError):
    """More unreadable samples than --max_bad_fraction on some rank (raised on every rank)."""


class BadSampleTracker:
    """Main-process bookkeeping of unreadable files: logged once each, counted once per epoch.

    A file counts once per epoch toward `max_bad_fraction` however many items' retries met it; the
    fraction is bad files over the samples of the epoch. Raises RuntimeError naming examples when it
    exceeds `max_bad_fraction` (checked as soon as it is certain, and at the end of the epoch). A file
    only the chosen backend cannot read (reason starting with READER_PROBLEM) is logged as such.
    `left_out()` lists every file left out so far in the run, for a driver's report.
    """

    def __init__(self, max_bad_fraction: float = 0.2, epoch_size: Optional[int] = None):
        self.max_bad_fraction, self.epoch_size = max_bad_fraction, epoch_size
        self.reported: Dict[str, str] = {}
        self.start_epoch()

    def start_epoch(self) -> None:
        self.bad, self.good, self.examples = 0, 0, []
        self._bad_paths: set = set()

    def update(self, batch: Dict[str, object], collective: bool = True) -> None:
        """Count `batch`'s bad files (each once per epoch) and its items. With `collective` (every
        rank calls this in step, as in training) the early stop is decided by all ranks together;
        without (evaluation shards differ in length) only counted, the check is left to `end_epoch`."""
        for path, reason in batch["bad"]:
            if path not in self.reported:
                self.reported[path] = reason
                if reason.startswith(READER_PROBLEM):
                    logger.warning("video %s: %s (replaced by another sample)", path, reason[len(READER_PROBLEM):])
                else:
                    logger.warning("unreadable video %s: %s (replaced by another sample)", path, reason)
            if path not in self._bad_paths:
                self._bad_paths.add(path)
                if len(self.examples) < 5:
                    self.examples.append(f"{path} ({reason})")
        self.bad = len(self._bad_paths)
        self.good += batch["num_items"]
        if collective and self.epoch_size:
            failing = ranks_with(self.bad > self.max_bad_fraction * self.epoch_size)
            if failing:
                self._fail(failing)

    def end_epoch(self) -> Dict[str, float]:
        """Epoch statistics; raises on every rank if too many samples were bad on any (a collective)."""
        tried = max(self.good, self.bad)
        failing = ranks_with(tried > 0 and self.bad / tried > self.max_bad_fraction)
        if failing:
            self._fail(failing)
        return {"bad_samples": self.bad, "bad_fraction": self.bad / tried if tried else 0.0}

    def left_out(self) -> Dict[str, str]:
        """Every file met unreadable so far in the run: path -> reason (the first one seen), sorted by path."""
        return dict(sorted(self.reported.items()))

    def _fail(self, failing: List[int]) -> None:
        """Raise on every rank the same message, naming the rank(s) whose share failed and their
        files (a collective: every rank gathers every rank's counts and examples)."""
        tried = max(self.good, self.bad, self.epoch_size or 0)
        shares = gather_objects((self.bad, tried, self.examples[:3]))
        parts = [f"{'' if len(shares) == 1 else f'on rank {r}: '}{shares[r][0]} of {shares[r][1]} samples tried this "
                 f"epoch were unreadable, more than --max_bad_fraction {self.max_bad_fraction}; e.g. "
                 f"{'; '.join(shares[r][2])}" for r in failing]
        raise TooManyBadSamples(" | ".join(parts))
