"""Which frames make a clip. Pure functions of (video length, settings, random generator).

Two schemes, shared by every dataset:
- dense (Kinetics-style, and all pretraining): `clip_len` frames `rate` apart inside one window;
  a random window in training, the centre one in validation, `num_segments` evenly spaced
  windows (first to last) in testing.
- segment (SSv2-style): the video is cut into `clip_len` equal segments and one frame is taken
  per segment: a random one in training, the middle one in validation, and in testing view j of
  m > 1 the frame at offset j/m of every segment (m=2 gives the official start and middle views).
Videos shorter than a clip repeat frames: dense windows repeat the last frame, segments shorter
than one frame repeat each frame.
"""
from typing import List, Optional

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
    """`clip_len` frame indices `rate` apart; the last frame repeats past the end of the video."""
    _check(num_video_frames, mode, segment, num_segments)
    max_start = max(num_video_frames - clip_len * rate, 0)
    if mode == "train":
        start = int(torch.randint(max_start + 1, (1,), generator=generator))
    elif mode == "val" or num_segments == 1:
        start = max_start // 2
    else:
        start = round(segment * max_start / (num_segments - 1))
    return [min(start + i * rate, num_video_frames - 1) for i in range(clip_len)]


def segment_indices(num_video_frames: int, clip_len: int, mode: str, generator: Optional[torch.Generator] = None,
                    segment: int = 0, num_segments: int = 1) -> List[int]:
    """One frame from each of `clip_len` equal segments of the video."""
    _check(num_video_frames, mode, segment, num_segments)
    tick = num_video_frames / clip_len
    if mode == "train":
        offsets = torch.rand(clip_len, generator=generator).tolist()
    elif mode == "val":
        offsets = [0.5] * clip_len
    else:  # one view: the middle frames; m views: offsets 0, 1/m, ... (m=2: official start and middle)
        offsets = [0.5 if num_segments == 1 else segment / num_segments] * clip_len
    return [min(int(tick * (i + o)), num_video_frames - 1) for i, o in enumerate(offsets)]
