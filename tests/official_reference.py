"""Test-only reference of the official SIGMA test views (QUVA-Lab/SIGMA kinetics.py and ssv2.py,
mode 'test', commit 13e9c1720be401f99e0512c77db10f2fb7c1ea89), written from reading that code:
decord decodes the whole index list, cv2 INTER_LINEAR resizes the short side, and views are
sliced out of the resized buffer. numpy/cv2 on purpose, so that it shares nothing with ours.
"""
from typing import List

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _resize_short_side(buffer: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = buffer.shape[1:3]
    if (w <= h and w == size) or (h <= w and h == size):
        return buffer
    new_h, new_w = (int(size * h / w), size) if w < h else (size, int(size * w / h))
    return np.stack([cv2.resize(f, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for f in buffer])


def official_test_views(path: str, sampling: str, clip_len: int, rate: int, short_side: int,
                        num_segment: int, num_crop: int, chunk: int) -> List[np.ndarray]:
    """The `num_crop` views of temporal chunk `chunk`: float32 [C, T, S, S] each, normalised."""
    from decord import VideoReader, cpu

    vr = VideoReader(path, num_threads=1, ctx=cpu(0))
    n = len(vr)
    if sampling == "dense":  # kinetics.py: every rate-th frame, then a window of clip_len
        index = list(range(0, n, rate))
        while len(index) < clip_len:
            index.append(index[-1])
    else:  # ssv2.py: clip_len segments; starts and middles sorted together
        tick = n / float(clip_len)
        index = [int(tick / 2.0 + tick * x) for x in range(clip_len)] + [int(tick * x) for x in range(clip_len)]
        while len(index) < clip_len * num_segment:
            index.append(index[-1])
        index = list(np.sort(np.array(index)))
    buffer = _resize_short_side(vr.get_batch(index).asnumpy(), short_side)  # [N, H, W, C]
    long_side = max(buffer.shape[1], buffer.shape[2])
    views = []
    for split in range(num_crop):
        spatial_start = int(split * (1.0 * (long_side - short_side) / (num_crop - 1)))
        if sampling == "dense":
            step = max(1.0 * (buffer.shape[0] - clip_len) / (num_segment - 1), 0)
            frames = buffer[int(chunk * step):int(chunk * step) + clip_len]
        else:
            frames = buffer[chunk::2]
        if buffer.shape[1] >= buffer.shape[2]:
            frames = frames[:, spatial_start:spatial_start + short_side]
        else:
            frames = frames[:, :, spatial_start:spatial_start + short_side]
        x = (frames.astype(np.float32) / 255.0 - MEAN) / STD  # [T, H, W, C]
        views.append(x.transpose(3, 0, 1, 2))
    return views
