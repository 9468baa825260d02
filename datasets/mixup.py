"""Mixup and CutMix for batches of clips, with label-smoothed soft targets.

timm's semantics (mixup_alpha, cutmix_alpha, cutmix_minmax, prob, switch_prob, mode, smoothing)
on [B, C, T, H, W] videos: every frame of a clip gets the same CutMix box, and each clip is mixed
with the clip at the mirrored batch position (i with B - 1 - i). Random draws come from torch's
global generator, whose state the checkpoints save, so a resumed run mixes identically.
"""
import math
from typing import Optional, Tuple

import torch

MODES = ("batch", "pair", "elem")


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """[B] class ids -> [B, num_classes] targets: 1 - smoothing + smoothing / K on the label, smoothing / K off it."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float,
               minmax: Optional[Tuple[float, float]] = None) -> Tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a box whose area is about (1 - lam) of the frame (timm's rand_bbox),
    or with sides drawn in [minmax[0], minmax[1]] of the frame's when `minmax` is given."""
    if minmax is not None:
        cut_h = int(torch.randint(int(height * minmax[0]), int(height * minmax[1]) + 1, ()).item())
        cut_w = int(torch.randint(int(width * minmax[0]), int(width * minmax[1]) + 1, ()).item())
        y0 = int(torch.randint(0, height - cut_h + 1, ()).item())
        x0 = int(torch.randint(0, width - cut_w + 1, ()).item())
        return y0, y0 + cut_h, x0, x0 + cut_w
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ()).item()), int(torch.randint(0, width, ()).item())
    return (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height), max(cx - cut_w // 2, 0),
            min(cx + cut_w // 2, width))


class Mixup:
    """Mix a batch of clips and build its soft targets.

    Args:
        mixup_alpha: Beta(alpha, alpha) of the mixup weight; 0 turns mixup off.
        cutmix_alpha: Beta(alpha, alpha) of the CutMix area; 0 turns CutMix off.
        cutmix_minmax: box side range as fractions of the frame (overrides cutmix_alpha's area).
        prob: probability of mixing a batch (batch mode) or a clip (pair/elem modes).
        switch_prob: probability of CutMix instead of mixup when both are on.
        mode: "batch" (one draw per batch), "pair" (one per mirrored pair), "elem" (one per clip).
        smoothing: label smoothing of the targets.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 cutmix_minmax: Optional[Tuple[float, float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", smoothing: float = 0.1):
        if mode not in MODES:
            raise ValueError(f"mixup mode must be one of {MODES}, got {mode!r}")
        if mixup_alpha <= 0 and cutmix_alpha <= 0 and cutmix_minmax is None:
            raise ValueError("Mixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        self.prob, self.switch_prob, self.mode, self.smoothing = prob, switch_prob, mode, smoothing
        self.use_cutmix = cutmix_alpha > 0 or self.cutmix_minmax is not None

    def _draw(self) -> Tuple[float, bool]:
        """(lam, use CutMix) of one mixing decision; lam = 1 means unmixed."""
        if torch.rand(()).item() >= self.prob:
            return 1.0, False
        cutmix = self.use_cutmix and (self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
        return lam, cutmix

    def _mix_one(self, dst: torch.Tensor, src: torch.Tensor, lam: float, cutmix: bool,
                 box: Optional[Tuple[int, int, int, int]] = None) -> Tuple[float, Optional[Tuple[int, int, int, int]]]:
        """Mix clip(s) `src` into `dst` in place ([..., T, H, W]); returns (weight of `dst`, CutMix box).
        A given `box` is reused (the second clip of a pair)."""
        if lam >= 1.0:
            return 1.0, None
        if not cutmix:
            dst.mul_(lam).add_(src * (1.0 - lam))
            return lam, None
        H, W = dst.shape[-2:]
        y0, y1, x0, x1 = box or cutmix_box(H, W, lam, self.cutmix_minmax)
        dst[..., y0:y1, x0:x1] = src[..., y0:y1, x0:x1]
        return 1.0 - (y1 - y0) * (x1 - x0) / (H * W), (y0, y1, x0, x1)  # the box as clipped to the frame

    def __call__(self, videos: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[B, C, T, H, W] clips, [B] labels -> mixed clips (new tensor), [B, num_classes] targets."""
        B = videos.shape[0]
        if self.mode != "batch" and B % 2:
            raise ValueError(f"mixup mode {self.mode!r} needs an even batch, got {B}")
        source = videos.flip(0)  # clip i is mixed with clip B - 1 - i
        mixed = videos.clone()
        lam = torch.ones(B)
        if self.mode == "batch":
            lam[:] = self._mix_one(mixed, source, *self._draw())[0]
        else:
            for i in range(B if self.mode == "elem" else B // 2):
                draw = self._draw()
                lam[i], box = self._mix_one(mixed[i], source[i], *draw)
                if self.mode == "pair":  # the partner takes the same draw with the roles swapped
                    lam[B - 1 - i] = self._mix_one(mixed[B - 1 - i], source[B - 1 - i], *draw, box=box)[0]
        lam = lam.to(videos.device)[:, None]
        y = smooth_one_hot(labels, self.num_classes, self.smoothing)
        return mixed, y * lam + y.flip(0) * (1.0 - lam)
