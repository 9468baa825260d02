"""Pretraining augmentation on the training device (`--gpu_augment`).

On a GPU node the workers' crops, antialiased resizes and float conversions of every view can be
what limits the step rate. With `VideoClipDataset(..., gpu_augment=True)` a worker only decodes
and draws each view's crop box (and the mask) from the item's generator; `DeviceAugment` moves
the padded uint8 decodes to the device and makes the worker path's "video" there:

    frames [B, T, H_max, W_max, C] uint8 ──crop box of each view──> [T, C, h, w]
        ──antialiased bilinear resize, rounded to uint8 (views with one box size in one call)──>
    [B*V, T, C, S, S] uint8 ──one normalisation──> video [B*V, C, T, S, S] float32

The resize is torchvision's `F.resize(..., antialias=True)`, the worker path's own kernel: on the
CPU device the result is the worker path's bit for bit; on CUDA torchvision resizes in float32 and
rounds, within one uint8 level of it. Masks stay drawn in the workers: they come from the same
generator after the boxes (so they are identical by construction), and the engine builds their
token index on the host (`HostMaskIndex`), where counting a device mask would wait for the device.
"""
from typing import Dict, Iterable, Iterator, List, Tuple

import torch
import torchvision.transforms.v2.functional as F

from datasets import transforms as T

# The keys of a gpu_augment batch (collate_clips) that this module turns into "video".
AUGMENT_KEYS = ("frames", "frame_size", "frame_index", "boxes")
# Crop pixels resized in one call: on CUDA torchvision resizes uint8 in float32, so this bounds that
# temporary (4 bytes per element, 1 GiB) however large the decoded frames are.
MAX_RESIZE_ELEMENTS = 2 ** 28


def crop_and_resize(frames: torch.Tensor, boxes: List[Tuple[int, int, int, int]], frame_index: List[int],
                    size: int) -> torch.Tensor:
    """Every view's crop of its clip, resized to size x size.

    Args:
        frames: uint8 [B, T, C, H_max, W_max] on the device (any strides).
        boxes: (top, left, height, width) of each of the N views, inside its clip's real frame.
        frame_index: the clip (index into `frames`) of each view.
        size: output side.
    Returns:
        uint8 [N, T, C, size, size], the views in the order of `boxes`.
    """
    groups: Dict[Tuple[int, int], List[int]] = {}  # views with one crop size share one resize call
    for view, (_, _, h, w) in enumerate(boxes):
        groups.setdefault((h, w), []).append(view)
    out = frames.new_empty((len(boxes), *frames.shape[1:3], size, size))  # [N, T, C, S, S]
    for (h, w), views in groups.items():
        per_call = max(1, MAX_RESIZE_ELEMENTS // (frames.shape[1] * frames.shape[2] * h * w))  # crops per call
        for start in range(0, len(views), per_call):
            chunk = views[start:start + per_call]
            crops = torch.stack([frames[frame_index[v], ..., boxes[v][0]:boxes[v][0] + h, boxes[v][1]:boxes[v][1] + w]
                                 for v in chunk])  # [G, T, C, h, w]
            resized = F.resize(crops, [size, size], antialias=True)  # [G, T, C, S, S]
            if len(chunk) == len(boxes):
                return resized
            for i, v in enumerate(chunk):  # device copies; an index tensor would be a host-to-device copy
                out[v] = resized[i]
    return out


def augment_batch(batch: Dict[str, object], device: torch.device, size: int) -> Dict[str, object]:
    """The worker path's batch from a gpu_augment one: AUGMENT_KEYS replaced by "video"
    [B*V, C, T, size, size] float32 on `device` (ImageNet-normalised); the other keys untouched.

    Raises:
        KeyError: the batch has no "frames" (its dataset was not built with gpu_augment=True).
        ValueError: a box outside its clip's real frame (a collate bug, never padding to crop).
    """
    missing = [k for k in AUGMENT_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch without {missing}: DeviceAugment needs a VideoClipDataset built with "
                       f"gpu_augment=True (--gpu_augment)")
    boxes = batch["boxes"].tolist()  # host tensors: no device sync
    frame_index = batch["frame_index"].tolist()
    frame_size = batch["frame_size"].tolist()
    for (top, left, h, w), b in zip(boxes, frame_index):
        if top < 0 or left < 0 or top + h > frame_size[b][0] or left + w > frame_size[b][1]:
            raise ValueError(f"crop box {(top, left, h, w)} outside its {frame_size[b]} clip")
    frames = batch["frames"].to(device, non_blocking=True)  # [B, T, H, W, C], pinned by the loader: an async copy
    frames = frames.permute(0, 1, 4, 2, 3)  # [B, T, C, H, W], the decoders' channels-last strides
    views = crop_and_resize(frames, boxes, frame_index, size)  # [N, T, C, S, S] uint8
    out = {k: v for k, v in batch.items() if k not in AUGMENT_KEYS}
    out["video"] = T.to_normalized_float(views)  # [N, C, T, S, S]
    return out


class DeviceAugment:
    """`loader` (of a gpu_augment dataset) whose batches come out augmented on `device`, as the
    worker path's batches but with "video" already there; `training_loop.to_device` then moves the
    rest. Wrapping the loader keeps the shared step loop and the engine's loss unchanged, leaves the
    masks on the host for `HostMaskIndex`, and counts the augmentation as data time."""

    def __init__(self, loader: Iterable, device: torch.device, size: int):
        self.loader, self.device, self.size = loader, device, size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Dict[str, object]]:
        for batch in self.loader:
            yield augment_batch(batch, self.device, self.size)
