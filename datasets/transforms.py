"""Clip augmentations on uint8 video tensors, one set of random parameters per clip.

Clips are uint8 [T, C, H, W] (RGB) until `to_normalized_float`, which returns float32 [C, T, H, W].
Every op treats the whole clip as one batch, so all frames get the same crop, flip, RandAugment ops
and magnitudes, and the same erased cube. This replaces the official per-frame PIL pipeline
(GroupMultiScaleCrop, video_transforms, timm's PIL RandAugment) with batched tensor ops.

All randomness is drawn from the `generator` argument (never from the global RNGs), so a clip's
augmentation is a function of the generator's state: seed it per (seed, epoch, item) to reproduce it.
"""
import functools
import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as NF
import torchvision.transforms.v2.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# timm's default hparams fill colour: the ImageNet mean in uint8, round(255 * mean).
IMG_MEAN_UINT8 = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)  # (124, 116, 104)
# The fill of the official fine-tuning RandAugment (VideoMAE/SIGMA rand_augment.py _FILL): their
# create_random_augment passes no img_mean.
OFFICIAL_FILL = (128, 128, 128)

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


def _negate_half(value: float, generator: torch.Generator) -> float:
    """timm's _randomly_negate: flip the sign with probability 0.5."""
    return -value if torch.rand(1, generator=generator).item() > 0.5 else value


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
# RandAugment ops on uint8 [T, C, H, W]; `fill` is the RGB colour of pixels sampled from outside

Fill = Tuple[int, int, int]


def _affine(clip: torch.Tensor, matrix: Sequence[float], fill: Fill) -> torch.Tensor:
    """PIL Image.transform(AFFINE) with bilinear sampling.

    `matrix` (a, b, c, d, e, f) maps an output point (x, y) to the input point
    (a x + b y + c, d x + e y + f), in pixel-edge coordinates sampled at pixel centres. As PIL,
    an output pixel whose input point falls outside the frame is `fill`; one inside is
    interpolated from the nearest pixels, clamped at the border (no blending with `fill`).
    """
    t, c, h, w = clip.shape
    a, b, tx, d, e, ty = matrix
    xs = torch.arange(w, dtype=torch.float32) + 0.5  # [W] pixel centres
    ys = torch.arange(h, dtype=torch.float32).unsqueeze(1) + 0.5  # [H, 1]
    x_in = a * xs + b * ys + tx  # [H, W]
    y_in = d * xs + e * ys + ty  # [H, W]
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)  # [H, W]
    # grid_sample's align_corners=False coordinates: -1 and 1 are the outer pixel edges.
    grid = torch.stack((x_in * (2.0 / w) - 1.0, y_in * (2.0 / h) - 1.0), dim=-1).unsqueeze(0)  # [1, H, W, 2]
    # Frames folded into channels so that one grid (one set of weights) serves the whole clip.
    x = clip.to(torch.float32, memory_format=torch.contiguous_format).view(1, t * c, h, w)
    out = NF.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Fill outside as out * inside + fill * (1 - inside): float arithmetic is several times
    # faster than torch.where on uint8 on the CPU.
    inside = inside.to(torch.float32)  # [H, W]
    outside_fill = torch.tensor(fill, dtype=torch.float32).view(1, c, 1, 1) * (1.0 - inside)  # [1, C, H, W]
    out = out.view(t, c, h, w).mul_(inside).add_(outside_fill)
    return out.clamp_(0, 255).to(torch.uint8)  # truncating, as PIL


def _rotate(clip: torch.Tensor, degrees: float, fill: Fill) -> torch.Tensor:
    # Counter-clockwise about the frame centre, as PIL's Image.rotate.
    h, w = clip.shape[-2:]
    angle = -math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    # input = R (output - centre) + centre, with R = [[cos, sin], [-sin, cos]].
    return _affine(clip, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy), fill)


def _shear_x(clip: torch.Tensor, factor: float, fill: Fill) -> torch.Tensor:
    return _affine(clip, (1, factor, 0, 0, 1, 0), fill)


def _shear_y(clip: torch.Tensor, factor: float, fill: Fill) -> torch.Tensor:
    return _affine(clip, (1, 0, 0, factor, 1, 0), fill)


def _translate_x_rel(clip: torch.Tensor, pct: float, fill: Fill) -> torch.Tensor:
    return _affine(clip, (1, 0, pct * clip.shape[-1], 0, 1, 0), fill)


def _translate_y_rel(clip: torch.Tensor, pct: float, fill: Fill) -> torch.Tensor:
    return _affine(clip, (1, 0, 0, 0, 1, pct * clip.shape[-2]), fill)


def _auto_contrast(clip: torch.Tensor, _arg: None, _fill: Fill) -> torch.Tensor:
    # Per frame and channel min/max, as PIL's autocontrast applied frame by frame.
    return F.autocontrast(clip)


def _equalize(clip: torch.Tensor, _arg: None, _fill: Fill) -> torch.Tensor:
    return F.equalize(clip)  # per frame and channel histograms


def _invert(clip: torch.Tensor, _arg: None, _fill: Fill) -> torch.Tensor:
    return 255 - clip


def _posterize(clip: torch.Tensor, bits: int, _fill: Fill) -> torch.Tensor:
    if bits >= 8:
        return clip
    mask = (0xFF << (8 - bits)) & 0xFF  # keep the `bits` most significant bits; 0 bits -> black
    return clip & mask


def _solarize(clip: torch.Tensor, threshold: int, _fill: Fill) -> torch.Tensor:
    if threshold > 255:
        return clip  # PIL: nothing is >= 256 (and 256 would wrap to 0 as a uint8 scalar)
    # 255 - x == x ^ 255 on uint8; the xor form avoids torch.where, slow on uint8 CPU tensors.
    return clip ^ (clip >= threshold).to(torch.uint8).mul_(255)


def _solarize_add(clip: torch.Tensor, add: int, _fill: Fill) -> torch.Tensor:
    # Adds `add` to values below 128. The level function caps add at 128, so x + add <= 255 and
    # PIL's min(255, x + add) never saturates: plain uint8 arithmetic is exact.
    return clip + (clip < 128).to(torch.uint8).mul_(add)


def _color(clip: torch.Tensor, factor: float, _fill: Fill) -> torch.Tensor:
    return F.adjust_saturation(clip, factor)  # blend with the greyscale frame, as ImageEnhance.Color


def _contrast(clip: torch.Tensor, factor: float, _fill: Fill) -> torch.Tensor:
    return F.adjust_contrast(clip, factor)  # blend with each frame's mean grey level


def _brightness(clip: torch.Tensor, factor: float, _fill: Fill) -> torch.Tensor:
    return F.adjust_brightness(clip, factor)  # blend with black


def _sharpness(clip: torch.Tensor, factor: float, _fill: Fill) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter, border pixels left as they are.

    The kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 is a 3x3 box sum plus 4x the centre; the
    box sum as two separable passes of shifted adds is ~10x faster than torchvision's grouped
    conv2d on the CPU.
    """
    h, w = clip.shape[-2:]
    if h <= 2 or w <= 2:
        return clip
    x = clip.to(torch.float32, memory_format=torch.contiguous_format)  # [T, C, H, W]
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # [T, C, H-2, W]
    inner = x[..., 1:-1, 1:-1]  # [T, C, H-2, W-2], a view: the border stays as it is
    smooth = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # 3x3 box sums
    smooth = smooth.add_(inner, alpha=4.0).div_(13.0).round_()
    # out = smooth + factor * (x - smooth) on the interior.
    inner.sub_(smooth).mul_(factor).add_(smooth)
    return x.clamp_(0, 255).to(torch.uint8)


# Magnitude level (0..10 by default) -> op argument, as timm's auto_augment.py (_LEVEL_DENOM 10).
_LEVEL_DENOM = 10.0
_TRANSLATE_PCT = 0.45  # timm's default hparams translate_pct

LevelFn = Callable[[float, torch.Generator], object]


def _rotate_level(level: float, g: torch.Generator) -> float:
    return _negate_half(level / _LEVEL_DENOM * 30.0, g)  # [-30, 30] degrees


def _posterize_level(level: float, g: torch.Generator) -> int:
    return int(level / _LEVEL_DENOM * 4)  # keep 0..4 bits


def _posterize_increasing_level(level: float, g: torch.Generator) -> int:
    return 4 - _posterize_level(level, g)  # keep 4..0 bits


def _solarize_level(level: float, g: torch.Generator) -> int:
    return min(256, int(level / _LEVEL_DENOM * 256))


def _solarize_increasing_level(level: float, g: torch.Generator) -> int:
    return 256 - _solarize_level(level, g)


def _solarize_add_level(level: float, g: torch.Generator) -> int:
    return min(128, int(level / _LEVEL_DENOM * 110))


def _enhance_level(level: float, g: torch.Generator) -> float:
    return level / _LEVEL_DENOM * 1.8 + 0.1  # [0.1, 1.9]


def _enhance_increasing_level(level: float, g: torch.Generator) -> float:
    # Away from the no-op factor 1 in either direction, never below 0.1.
    return max(0.1, 1.0 + _negate_half(level / _LEVEL_DENOM * 0.9, g))


def _shear_level(level: float, g: torch.Generator) -> float:
    return _negate_half(level / _LEVEL_DENOM * 0.3, g)


def _translate_rel_level(level: float, g: torch.Generator) -> float:
    return _negate_half(level / _LEVEL_DENOM * _TRANSLATE_PCT, g)


# name -> (level fn or None for ops without an argument, op(clip, arg, fill))
_RAND_OPS: Dict[str, Tuple[Optional[LevelFn], Callable]] = {
    "AutoContrast": (None, _auto_contrast),
    "Equalize": (None, _equalize),
    "Invert": (None, _invert),
    "Rotate": (_rotate_level, _rotate),
    "Posterize": (_posterize_level, _posterize),
    "PosterizeIncreasing": (_posterize_increasing_level, _posterize),
    "Solarize": (_solarize_level, _solarize),
    "SolarizeIncreasing": (_solarize_increasing_level, _solarize),
    "SolarizeAdd": (_solarize_add_level, _solarize_add),
    "Color": (_enhance_level, _color),
    "ColorIncreasing": (_enhance_increasing_level, _color),
    "Contrast": (_enhance_level, _contrast),
    "ContrastIncreasing": (_enhance_increasing_level, _contrast),
    "Brightness": (_enhance_level, _brightness),
    "BrightnessIncreasing": (_enhance_increasing_level, _brightness),
    "Sharpness": (_enhance_level, _sharpness),
    "SharpnessIncreasing": (_enhance_increasing_level, _sharpness),
    "ShearX": (_shear_level, _shear_x),
    "ShearY": (_shear_level, _shear_y),
    "TranslateXRel": (_translate_rel_level, _translate_x_rel),
    "TranslateYRel": (_translate_rel_level, _translate_y_rel),
}

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS ('inc1').
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)


def parse_rand_augment(config_str: str) -> Dict[str, float]:
    """Parse a timm RandAugment string such as 'rand-m7-n4-mstd0.5-inc1'.

    Sections after 'rand': m (int magnitude, default 10), n (int ops per clip, default 2),
    mstd (magnitude std; > 100 means uniform in [0, m]), mmax (int magnitude cap, default 10),
    inc (0/1, use the increasing-severity op set), p (per-op probability, default 0.5).
    Unlike timm, which skips sections it cannot read, any other section raises ValueError.
    """
    pieces = config_str.split("-")
    if pieces[0] != "rand":
        raise ValueError(f"RandAugment config {config_str!r} must start with 'rand', got {pieces[0]!r}")
    cfg = dict(magnitude=10, num_ops=2, magnitude_std=0.0, magnitude_max=_LEVEL_DENOM, increasing=False, prob=0.5)
    for piece in pieces[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", piece)
        key, val = match.groups() if match else (None, None)
        is_int = val is not None and val.isdigit()
        if key in ("m", "n", "mmax", "inc") and is_int:
            name = dict(m="magnitude", n="num_ops", mmax="magnitude_max", inc="increasing")[key]
            cfg[name] = bool(int(val)) if key == "inc" else int(val)
            if key == "mmax" and cfg[name] == 0:
                cfg[name] = _LEVEL_DENOM  # timm: 'magnitude_max or _LEVEL_DENOM'
        elif key == "mstd":
            cfg["magnitude_std"] = math.inf if float(val) > 100 else float(val)
        elif key == "p" and float(val) <= 1.0:
            cfg["prob"] = float(val)
        else:
            raise ValueError(f"bad RandAugment config section {piece!r} in {config_str!r}")
    return cfg


class RandAugment:
    """timm's RandAugment applied to a whole clip with the same ops and arguments on every frame.

    Per call: `n` ops drawn uniformly with replacement from the op set; each then runs with
    probability p, at a magnitude drawn from N(m, mstd) (uniform in [0, m] if mstd is infinite)
    clipped to [0, mmax], mapped to its argument as timm's level functions (a random sign for
    rotate, shear, translate and the increasing enhance ops). Each op matches timm's PIL op to
    within one grey level, except that geometric ops always resample bilinearly (the official
    fine-tuning passes bicubic; grid_sample's bicubic is 2.5x slower and uses another kernel).

    Args:
        config_str: timm config string, e.g. 'rand-m7-n4-mstd0.5-inc1'.
        fill: RGB colour of pixels that geometric ops bring in from outside the frame. The default
            is timm's ImageNet-mean hparam; VideoMAE/SIGMA pass no img_mean, so theirs is (128, 128, 128).
    """

    def __init__(self, config_str: str, fill: Fill = IMG_MEAN_UINT8) -> None:
        cfg = parse_rand_augment(config_str)
        self.config_str = config_str
        self.magnitude = float(cfg["magnitude"])
        self.num_ops = int(cfg["num_ops"])
        self.magnitude_std = float(cfg["magnitude_std"])
        self.magnitude_max = float(cfg["magnitude_max"])
        self.prob = float(cfg["prob"])
        self.op_names = RAND_INCREASING_TRANSFORMS if cfg["increasing"] else RAND_TRANSFORMS
        self.fill = tuple(fill)

    def _magnitude(self, generator: torch.Generator) -> float:
        magnitude = self.magnitude
        if self.magnitude_std == math.inf:
            magnitude = _uniform(generator, 0.0, magnitude)
        elif self.magnitude_std > 0:
            magnitude += self.magnitude_std * torch.randn(1, generator=generator).item()
        return max(0.0, min(magnitude, self.magnitude_max))

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Args: clip uint8 [T, C, H, W]. Returns: uint8 [T, C, H, W]."""
        picks = torch.randint(len(self.op_names), (self.num_ops,), generator=generator).tolist()
        for i in picks:
            # Same draw order as timm's AugmentOp: skip test, magnitude, then the level's sign.
            if self.prob < 1.0 and torch.rand(1, generator=generator).item() > self.prob:
                continue
            level_fn, op = _RAND_OPS[self.op_names[i]]
            magnitude = self._magnitude(generator)
            arg = level_fn(magnitude, generator) if level_fn is not None else None
            clip = op(clip, arg, self.fill)
        return clip

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.config_str!r}, fill={self.fill})"


# ----------------------------------------------------------------------------------------------
# Float stage: normalisation and random erasing

def to_normalized_float(clip: torch.Tensor) -> torch.Tensor:
    """uint8 [T, C, H, W] -> ImageNet-normalised float32 [C, T, H, W] (contiguous).

    One copy does the cast and the layout change; the normalisation is then one in-place
    multiply-add with (1 / (255 std), -mean / std).
    """
    if clip.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 clip, got {clip.dtype}")
    x = clip.permute(1, 0, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)  # [C, T, H, W]
    return x.mul_(_NORM_SCALE).add_(_NORM_SHIFT)


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
