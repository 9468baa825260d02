"""Clip augmentations on uint8 video tensors, one set of random parameters per clip.

Clips are uint8 [T, C, H, W] (RGB) until `to_normalized_float`, which returns float32 [C, T, H, W].
Every op treats the whole clip as one batch, so all frames get the same crop, flip, RandAugment ops
and magnitudes, and the same erased cube. This replaces the official per-frame PIL pipeline
(GroupMultiScaleCrop, video_transforms, timm's PIL RandAugment) with batched tensor ops.
RandAugment lives in datasets/randaugment.py; `RandAugment` and `OFFICIAL_FILL` are re-exported here.

All randomness is drawn from the `generator` argument (never from the global RNGs), so a clip's
augmentation is a function of the generator's state: seed it per (seed, epoch, item) to reproduce it.
"""
import functools
import math
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as NF
import torchvision.transforms.v2.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from datasets.randaugment import OFFICIAL_FILL, RandAugment  # noqa: F401  (re-exported: T.RandAugment)

# Normalisation folded into one multiply-add on uint8 values: (x / 255 - mean) / std.
_NORM_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_DEFAULT_STD]).view(3, 1, 1, 1)
_NORM_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]).view(3, 1, 1, 1)


# ----------------------------------------------------------------------------------------------
# Random draws from an explicit generator

def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand(1, generator=generator).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high], both ends included (Python's random.randint)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


# ----------------------------------------------------------------------------------------------
# Resizing and deterministic crops

@functools.lru_cache(maxsize=256)
def _cv2_linear_taps(src: int, dst: int, clamp: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2.resize INTER_LINEAR taps along one axis: (first source index, its weight, the next's).

    As cv2's resize for 8-bit images: scale = 1 / (dst / src); f = float32((d + 0.5) * scale - 0.5);
    s = floor(f); weights round((1 - f) * 2048) and round(f * 2048) (11-bit fixed point). Along x
    (`clamp`) a tap left of the image or on its last column becomes (s clamped, weights 2048, 0);
    along y the weights are kept and the rows are clamped when read.
    """
    scale = 1.0 / (dst / src)
    index, w0, w1 = [], [], []
    for d in range(dst):
        f = float(np.float32((d + 0.5) * scale - 0.5))
        s = math.floor(f)
        f = float(np.float32(f - s))
        if clamp and s < 0:
            s, f = 0, 0.0
        if clamp and s >= src - 1:
            s, f = src - 1, 0.0
        index.append(s)
        w0.append(int(np.rint(np.float32(1.0 - f) * np.float32(2048))))  # cvRound: half to even
        w1.append(int(np.rint(np.float32(f) * np.float32(2048))))
    return (torch.tensor(index), torch.tensor(w0, dtype=torch.int32), torch.tensor(w1, dtype=torch.int32))


def cv2_linear_resize(clip: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bit-exact cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR) of uint8 frames.

    cv2's fixed-point path: a horizontal pass with 11-bit weights into int32, then a vertical pass
    computing ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16), rounded by (+2) >> 2 (its SIMD
    kernel). Exact 2x shrinks, where cv2 switches to INTER_AREA, give the same values. Checked
    equal to cv2 on shrinking and enlarging sizes (tests/test_official_protocol.py).

    Args:
        clip: uint8 [T, C, H, W].
        size: (h, w) of the output.
    Returns:
        uint8 [T, C, h, w].
    """
    h, w = clip.shape[-2:]
    new_h, new_w = size
    x0, a0, a1 = _cv2_linear_taps(w, new_w, True)
    x1 = (x0 + 1).clamp_(max=w - 1)
    y0, b0, b1 = _cv2_linear_taps(h, new_h, False)

    def horizontal(rows: torch.Tensor) -> torch.Tensor:  # uint8 [T, C, h, W] -> int32 [T, C, h, w]
        return (rows.index_select(-1, x0).to(torch.int32).mul_(a0)
                .add_(rows.index_select(-1, x1).to(torch.int32).mul_(a1)))

    r0 = horizontal(clip.index_select(-2, y0.clamp(0, h - 1))) >> 4  # [T, C, h, w]
    r1 = horizontal(clip.index_select(-2, (y0 + 1).clamp(0, h - 1))) >> 4
    out = ((r0 * b0.view(-1, 1)) >> 16) + ((r1 * b1.view(-1, 1)) >> 16)
    return ((out + 2) >> 2).clamp_(0, 255).to(torch.uint8)


def bilinear_resize(clip: torch.Tensor, size: Sequence[int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of uint8 frames to size = (h, w).

    antialias=False is the official val/test resize, cv2.resize(INTER_LINEAR) bit for bit
    (`cv2_linear_resize`): half-pixel centres, no low-pass when shrinking. antialias=True
    low-passes when shrinking, as PIL's bilinear.

    Args:
        clip: uint8 [T, C, H, W].
    """
    if antialias:
        return F.resize(clip, list(size), antialias=True)
    return cv2_linear_resize(clip, size)  # [T, C, h, w]


def resize_short_side(clip: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize so that min(h, w) == size, keeping the aspect ratio.

    The long side is truncated, int(size * long / short), as the official video_transforms.Resize,
    which resizes with cv2 INTER_LINEAR (antialias=False, the default).

    Args:
        clip: uint8 [T, C, H, W].
        size: target short side.
        antialias: low-pass when shrinking (PIL-like) instead of the official cv2 resize.
    """
    h, w = clip.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if (new_h, new_w) == (h, w):
        return clip
    return bilinear_resize(clip, (new_h, new_w), antialias=antialias)  # [T, C, new_h, new_w]


def resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Warp every frame to size x size, aspect ratio not kept.

    The official pretraining 'resize' augmentation (SIGMA datasets.py, GroupResize) is
    torchvision Resize((size, size)) on PIL frames: a bilinear, antialiased resize of the whole
    frame to a square, with no crop afterwards.

    Args:
        clip: uint8 [T, C, H, W].
        size: output height and width.
    """
    return F.resize(clip, [size, size], antialias=True)  # [T, C, size, size]


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Centre size x size crop; offsets round((H - size) / 2) as torchvision's CenterCrop.

    Args:
        clip: uint8 [T, C, H, W] with H, W >= size.
    """
    h, w = clip.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} exceeds frame size {h}x{w}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return clip[..., top:top + size, left:left + size]


def spatial_crops(clip: torch.Tensor, size: int, num_crops: int) -> List[torch.Tensor]:
    """Evenly spaced size x size crops along the long side (the multi-crop test protocol).

    With 3 crops these are left/centre/right on a wide clip and top/centre/bottom on a tall one,
    at offsets int(i * (long - size) / (num_crops - 1)) as VideoMAE's test loader; 1 crop is the
    centre crop. The short side is centred, so it should already equal `size`.

    Args:
        clip: uint8 [T, C, H, W], short side resized to `size` by the caller.
        size: crop height and width.
        num_crops: number of crops, >= 1.
    Returns:
        `num_crops` uint8 [T, C, size, size] views.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    if num_crops == 1:
        return [center_crop(clip, size)]
    h, w = clip.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} exceeds frame size {h}x{w}")
    long_axis_is_h = h > w
    step = ((h if long_axis_is_h else w) - size) / (num_crops - 1)
    centred = int(round(((w if long_axis_is_h else h) - size) / 2.0))
    crops = []
    for i in range(num_crops):
        start = int(i * step)
        top, left = (start, centred) if long_axis_is_h else (centred, start)
        crops.append(clip[..., top:top + size, left:left + size])
    return crops


# ----------------------------------------------------------------------------------------------
# Random crops and flip

def multi_scale_crop_params(
    height: int,
    width: int,
    size: int,
    generator: torch.Generator,
    scales: Sequence[float] = (1, .875, .75, .66),
    max_distort: int = 1,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> Tuple[int, int, int, int]:
    """Crop box of the official GroupMultiScaleCrop: (top, left, crop_h, crop_w).

    Crop sides are int(short_side * scale), snapped to `size` when within 3 pixels of it; a
    (w, h) pair is drawn uniformly among scale-index pairs (i, j) with |i - j| <= max_distort.
    With fix_crop the offset is one of the corner/centre grid points at multiples of
    (image - crop) // 4 (5 points, 13 with more_fix_crop); otherwise it is uniform.
    Unlike the official code, a snapped side larger than the frame is clamped to the frame
    (PIL would pad the crop with black there).
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    crop_hs = [size if abs(s - size) < 3 else s for s in sides]
    crop_ws = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(cw, ch) for i, ch in enumerate(crop_hs) for j, cw in enumerate(crop_ws) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[_randint(generator, 0, len(pairs) - 1)]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    if not fix_crop:
        return _randint(generator, 0, height - crop_h), _randint(generator, 0, width - crop_w), crop_h, crop_w
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    # Grid positions in units of (w_step, h_step), in the official order.
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more_fix_crop:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    gx, gy = grid[_randint(generator, 0, len(grid) - 1)]
    return gy * h_step, gx * w_step, crop_h, crop_w


def multi_scale_crop(
    clip: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scales: Sequence[float] = (1, .875, .75, .66),
    max_distort: int = 1,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> torch.Tensor:
    """GroupMultiScaleCrop: one multi-scale crop for the whole clip, resized to size x size.

    Args:
        clip: uint8 [T, C, H, W].
        size: output side.
        generator: source of the crop choice.
        scales, max_distort, fix_crop, more_fix_crop: as `multi_scale_crop_params`.
    Returns:
        uint8 [T, C, size, size].
    """
    h, w = clip.shape[-2:]
    top, left, crop_h, crop_w = multi_scale_crop_params(
        h, w, size, generator, scales=scales, max_distort=max_distort, fix_crop=fix_crop, more_fix_crop=more_fix_crop)
    # Bilinear with antialias, as PIL's resize in the official code.
    return F.resized_crop(clip, top, left, crop_h, crop_w, [size, size], antialias=True)


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> Tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, crop_h, crop_w).

    Ten tries of an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`;
    if none fits, the largest centred box whose aspect ratio is clamped into `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, 0, height - h), _randint(generator, 0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    clip: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    antialias: bool = True,
) -> torch.Tensor:
    """Inception-style random resized crop, the same box for every frame.

    Args:
        clip: uint8 [T, C, H, W].
        size: output side.
        generator: source of the box.
        scale: range of the crop's area fraction.
        ratio: range of the crop's aspect ratio (w / h), sampled log-uniformly.
        antialias: False is the official fine-tuning crop's plain bilinear, here torch's native
            uint8 kernel (5x faster than the float round trip of `bilinear_resize`, within one level).
    Returns:
        uint8 [T, C, size, size].
    """
    h, w = clip.shape[-2:]
    top, left, crop_h, crop_w = random_resized_crop_params(h, w, generator, scale=scale, ratio=ratio)
    box = clip[..., top:top + crop_h, left:left + crop_w]
    if antialias:
        return F.resize(box, [size, size], antialias=True)
    return NF.interpolate(box, size=(size, size), mode="bilinear", align_corners=False)  # uint8 in, uint8 out


def random_resized_crop_float(
    clip: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.25, 1.0),
    ratio: Sequence[float] = (0.75, 1.3333),
) -> torch.Tensor:
    """The official fine-tuning crop (video_transforms.random_resized_crop), normalised float out.

    Box as `random_resized_crop_params`, then F.interpolate(bilinear, align_corners=False), no
    antialias and no rounding, as the official, which crops the normalised float frames. Only the
    box is converted to float: normalisation is a per-channel affine map and bilinear weights sum
    to one, so normalising before or after the resize is the same (to float rounding).

    Args:
        clip: uint8 [T, C, H, W].
    Returns:
        float [C, T, size, size], ImageNet-normalised.
    """
    h, w = clip.shape[-2:]
    top, left, crop_h, crop_w = random_resized_crop_params(h, w, generator, scale=scale, ratio=ratio)
    box = to_normalized_float(clip[..., top:top + crop_h, left:left + crop_w])  # [C, T, crop_h, crop_w]
    return NF.interpolate(box, size=(size, size), mode="bilinear", align_corners=False)


def horizontal_flip(clip: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror every frame left-right with probability p.

    Args:
        clip: [..., H, W] tensor, any dtype.
    """
    if torch.rand(1, generator=generator).item() < p:
        return clip.flip(-1)
    return clip


# ----------------------------------------------------------------------------------------------
# Float stage: normalisation and random erasing

@functools.lru_cache(maxsize=None)
def _norm_constants(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) on `device`, copied there once: a per-batch pageable copy would wait on the device."""
    return _NORM_SCALE.to(device), _NORM_SHIFT.to(device)


def to_normalized_float(clip: torch.Tensor) -> torch.Tensor:
    """uint8 [..., T, C, H, W] -> ImageNet-normalised float32 [..., C, T, H, W] (contiguous).

    One copy does the cast and the layout change; the normalisation is then one in-place
    multiply-add with (1 / (255 std), -mean / std). A leading batch axis (the device augmentation's
    [N, T, C, H, W] views, datasets/gpu_augment.py) gets the same ops, element for element.
    """
    if clip.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 clip, got {clip.dtype}")
    x = clip.transpose(-4, -3).to(torch.float32, memory_format=torch.contiguous_format)  # [..., C, T, H, W]
    scale, shift = _norm_constants(x.device)
    return x.mul_(scale).add_(shift)


def random_erasing(
    clip: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.25,
    mode: str = "pixel",
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_count: int = 1,
    max_count: int = 1,
    max_attempts: int = 100,
) -> torch.Tensor:
    """The official video RandomErasing (VideoMAE/SIGMA random_erasing.py, cube mode) on a clip.

    With probability `probability`, count ~ U{min_count..max_count} boxes are drawn, each from up
    to `max_attempts` (official cube mode: 100) tries of area fraction U(min_area, max_area) / count
    and log-uniform aspect ratio in [0.3, 1 / 0.3]. The box is the same in every frame (a cube);
    the fill is drawn per frame, as the official: 'pixel' per-pixel N(0, 1) noise, 'rand' one
    N(0, 1) colour per channel and frame, 'const' zeros.

    Args:
        clip: float [C, T, H, W]; modified in place and returned.
    """
    mode = mode.lower()
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"unknown random erasing mode {mode!r}")
    # '>=' so that probability 0 never erases, even when the draw is exactly 0.
    if torch.rand(1, generator=generator).item() >= probability:
        return clip
    c, t, img_h, img_w = clip.shape
    count = _randint(generator, min_count, max_count)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    for _ in range(count):
        for _attempt in range(max_attempts):
            target_area = _uniform(generator, min_area, max_area) * img_h * img_w / count
            aspect = math.exp(_uniform(generator, *log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < img_w and h < img_h:
                top, left = _randint(generator, 0, img_h - h), _randint(generator, 0, img_w - w)
                if mode == "pixel":
                    fill = torch.randn((c, t, h, w), generator=generator, dtype=clip.dtype)
                elif mode == "rand":
                    fill = torch.randn((c, t, 1, 1), generator=generator, dtype=clip.dtype)
                else:
                    fill = torch.zeros((c, 1, 1, 1), dtype=clip.dtype)
                clip[:, :, top:top + h, left:left + w] = fill  # one box, a fill per frame
                break
    return clip
