"""Which frames make a clip. Pure functions of (video length, settings, random generator).

Two schemes, shared by every dataset, each following the official SIGMA loaders
(QUVA-Lab/SIGMA kinetics.py and ssv2.py, `loadvideo_decord`):
- dense (Kinetics-style):
  - pretraining (`dense_indices` "train"): `clip_len` frames `rate` apart from a uniform start,
    as the official VideoMAE pretraining loader; the last frame repeats past the end.
  - fine-tuning training (`linspace_indices`): a random window of `clip_len * rate` frames,
    `clip_len` frames at np.linspace positions in it (spacing rate * clip_len / (clip_len - 1)).
  - validation: the centre window with `rate` spacing (official: a random window, see FINETUNE.md).
  - test: the list of every `rate`-th frame of the video (padded with its last entry to
    `clip_len`), view s of m starting at int(s * (len - clip_len) / (m - 1)) in that list.
- segment (SSv2-style): `clip_len` integer segments of `n // clip_len` frames (the frames past
  `clip_len * (n // clip_len)` are never used; n < clip_len repeats frame 0):
  - training: one random frame per segment;
  - validation: the middle frame of each segment (official: random, see FINETUNE.md);
  - test with m <= 2 views: the segment starts int(tick * i) and middles int(tick / 2 + tick * i)
    (tick = n / clip_len) sorted into one list, view s taking its entries s, s + 2, ...; with
    m > 2 (where the official list breaks) view s takes offset s / m of every fractional segment.
"""
from typing import List, Optional

import numpy as np
import torch

MODES = ("train", "val", "test")


def _check(num_video_frames: int, mode: str, segment: int, num_segments: int) -> None:
    if num_video_frames < 1:
        raise ValueError("video has no frames")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= segment < num_segments:
        raise ValueError(f"segment {segment} outside [0, {num_segments})")


def dense_indices(num_video_frames: int, clip_len: int, rate: int, mode: str,
                  generator: Optional[torch.Generator] = None, segment: int = 0, num_segments: int = 1) -> List[int]:
    """`clip_len` frame indices `rate` apart; the last frame repeats past the end of the video.

    Test views index the list of every `rate`-th frame, as the official test loader: view
    `segment` of `num_segments` starts at int(segment * (len(list) - clip_len) / (num_segments - 1))
    of that list (one view, where the official divides by zero: the centre, (len - clip_len) // 2).
    """
    _check(num_video_frames, mode, segment, num_segments)
    if mode == "test":
        strided = list(range(0, num_video_frames, rate))  # every rate-th frame
        strided += [strided[-1]] * (clip_len - len(strided))  # short video: repeat the last one
        spare = len(strided) - clip_len
        start = spare // 2 if num_segments == 1 else int(segment * (1.0 * spare / (num_segments - 1)))
        return strided[start:start + clip_len]
    max_start = max(num_video_frames - clip_len * rate, 0)
    if mode == "train":
        start = int(torch.randint(max_start + 1, (1,), generator=generator))
    else:
        start = max_start // 2
    return [min(start + i * rate, num_video_frames - 1) for i in range(clip_len)]


def linspace_indices(num_video_frames: int, clip_len: int, rate: int,
                     generator: Optional[torch.Generator] = None) -> List[int]:
    """Official fine-tuning training frames (kinetics.py `loadvideo_decord`, one segment).

    With span = clip_len * rate: a video longer than the span gets an end drawn uniformly in
    [span, n - 1], and clip_len frames at np.linspace(end - span, end, clip_len), the last one
    pulled back to end - 1. A shorter video gets n // rate linspace positions over [0, n], padded
    with n, all clipped to n - 1.
    """
    _check(num_video_frames, "train", 0, 1)
    n, span = num_video_frames, clip_len * rate
    if n <= span:
        positions = np.linspace(0, n, num=n // rate)
        positions = np.concatenate((positions, np.full(clip_len - n // rate, n)))
        return np.clip(positions, 0, n - 1).astype(np.int64).tolist()
    end = int(torch.randint(span, n, (1,), generator=generator))  # numpy randint(span, n)
    start = end - span
    return np.clip(np.linspace(start, end, num=clip_len), start, end - 1).astype(np.int64).tolist()


def segment_indices(num_video_frames: int, clip_len: int, mode: str, generator: Optional[torch.Generator] = None,
                    segment: int = 0, num_segments: int = 1) -> List[int]:
    """One frame from each of `clip_len` segments of the video (see the module docstring)."""
    _check(num_video_frames, mode, segment, num_segments)
    n = num_video_frames
    if mode == "test":
        tick = n / float(clip_len)
        if num_segments <= 2:
            middles = [int(tick / 2.0 + tick * i) for i in range(clip_len)]
            starts = [int(tick * i) for i in range(clip_len)]
            return sorted(middles + starts)[segment::2]
        return [min(int(tick * (i + segment / num_segments)), n - 1) for i in range(clip_len)]
    length = n // clip_len  # integer segments; 0 for a short video: frame 0 throughout
    if mode == "train":
        offsets = torch.randint(max(length, 1), (clip_len,), generator=generator).tolist()  # 0 if length is 0
        return [i * length + o for i, o in enumerate(offsets)]
    return [i * length + length // 2 for i in range(clip_len)]
