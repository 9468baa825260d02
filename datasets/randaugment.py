"""timm's RandAugment on uint8 video clips: policy-string parsing, the ops, and the `RandAugment` class.

Clips are uint8 [T, C, H, W] (RGB). Each op treats the whole clip as one batch, so every frame
gets the same ops and magnitudes; this replaces timm's per-frame PIL RandAugment of the official
fine-tuning pipeline. All randomness is drawn from the `generator` argument, as in
datasets/transforms.py, which re-exports `RandAugment` and `OFFICIAL_FILL`.
"""
import math
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as NF
import torchvision.transforms.v2.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN

# timm's default hparams fill colour: the ImageNet mean in uint8, round(255 * mean).
IMG_MEAN_UINT8 = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)  # (124, 116, 104)
# The fill of the official fine-tuning RandAugment (VideoMAE/SIGMA rand_augment.py _FILL): their
# create_random_augment passes no img_mean.
OFFICIAL_FILL = (128, 128, 128)

Fill = Tuple[int, int, int]


def _negate_half(value: float, generator: torch.Generator) -> float:
    """timm's _randomly_negate: flip the sign with probability 0.5."""
    return -value if torch.rand(1, generator=generator).item() > 0.5 else value


# ----------------------------------------------------------------------------------------------
# Ops on uint8 [T, C, H, W]; `fill` is the RGB colour of pixels sampled from outside

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
            magnitude = magnitude * torch.rand(1, generator=generator).item()  # uniform in [0, m]
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
