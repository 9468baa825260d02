"""Sliding windows over a whole video, and their clips streamed from one front-to-back decode.

A window is `num_frames` frames `sampling_rate` apart on a timeline: the video's own frames, or
(`target_fps`) the video resampled to a fixed rate first, timeline frame j being the source frame
shown at time j / target_fps (floor(j x fps / target_fps)). Windows start every `stride` timeline
frames from 0. Full windows are those whose frames all exist. The tail:
- "drop": full windows only (VideoMAEv2's extract_tad_feature.py: starts range(0, n - 15, stride));
  a video shorter than one window has none.
- "pad": also one window at the next stride start when frames after the last full window (or, in a
  video shorter than one window, any frames) would be left uncovered; its frames past the end
  repeat the last frame. Window k then still starts at k x stride, as TAD loaders assume.

Times are seconds of the timeline: a window covers [start, start + span) frames, span =
(num_frames - 1) x sampling_rate + 1; its start time is start / rate, its centre (start + span / 2) / rate.

`stream_clips` holds only the frames still needed by windows not yet emitted (a ring of about
span + batch x stride frames), so memory does not grow with the video's length.
"""
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

TAILS = ("pad", "drop")


@dataclass(frozen=True)
class WindowPlan:
    """Every window of one video.

    frames: int64 [W, num_frames] source frame indices (ascending in each row).
    start_frame: int64 [W] timeline index of each window's first frame.
    start_time, centre_time: float64 [W] seconds (NaN when the frame rate is unknown).
    timeline_frames: frames of the timeline (the source's, or after resampling).
    padded: whether the last window repeats the last frame (tail "pad").
    """
    frames: np.ndarray
    start_frame: np.ndarray
    start_time: np.ndarray
    centre_time: np.ndarray
    timeline_frames: int
    padded: bool

    def __len__(self) -> int:
        return self.frames.shape[0]

    def needed(self) -> frozenset:
        """The source frame indices some window uses."""
        return frozenset(np.unique(self.frames).tolist())


def timeline_length(num_frames: int, fps: Optional[Fraction], target_fps: Optional[Fraction]) -> int:
    """Frames of the timeline: `num_frames`, or the j with floor(j x fps / target_fps) < num_frames."""
    if target_fps is None:
        return num_frames
    if fps is None:
        raise ValueError("the video's frame rate is unknown: cannot resample it to a fixed rate")
    # j * fps / target < num_frames  <=>  j < num_frames * target / fps
    bound = Fraction(num_frames) * target_fps / fps
    return int(bound) if bound.denominator == 1 else int(bound) + 1


def plan_windows(num_frames: int, fps: Optional[Fraction], *, window: int, sampling_rate: int, stride: int,
                 tail: str = "pad", target_fps: Optional[Fraction] = None) -> WindowPlan:
    """The windows of a video of `num_frames` frames at `fps` (module docstring).

    Args:
        window: frames per window (the model's num_frames).
        sampling_rate: timeline frames between two frames of a window.
        stride: timeline frames between two window starts.
        tail: "pad" or "drop".
        target_fps: resample to this rate first (None: the video's own frames).
    """
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    if min(window, sampling_rate, stride) < 1:
        raise ValueError("window, sampling_rate and stride must be >= 1")
    length = timeline_length(num_frames, fps, target_fps)
    span = (window - 1) * sampling_rate + 1
    full = (length - span) // stride + 1 if length >= span else 0
    starts = list(range(0, full * stride, stride))
    last_end = starts[-1] + span if starts else 0  # first timeline frame after the last full window
    padded = tail == "pad" and last_end < length and (not starts or starts[-1] + stride < length)
    if padded:
        starts.append(starts[-1] + stride if starts else 0)
    start = np.asarray(starts, dtype=np.int64)
    timeline = np.minimum(start[:, None] + sampling_rate * np.arange(window, dtype=np.int64), length - 1)  # [W, T]
    if target_fps is None:
        frames = timeline
    else:  # floor(j * fps / target_fps), exactly, in integers
        num, den = (Fraction(fps) / Fraction(target_fps)).as_integer_ratio()
        frames = timeline * num // den
    rate = float(target_fps if target_fps is not None else fps) if (target_fps or fps) else float("nan")
    return WindowPlan(frames=frames.reshape(len(starts), window), start_frame=start,
                      start_time=start / rate, centre_time=(start + span / 2) / rate,
                      timeline_frames=length, padded=padded)


def stream_clips(frames: Iterable[Tuple[int, np.ndarray]], plan: WindowPlan, batch_size: int,
                 prepare: Callable[[torch.Tensor], torch.Tensor],
                 chunk: int = 16) -> Iterator[Tuple[int, torch.Tensor]]:
    """(first window, clips [B, C, T, h, w]) for every `batch_size` windows of `plan`, in order.

    Args:
        frames: (index, uint8 [H, W, 3]) of at least every frame the plan uses, increasing.
        prepare: uint8 [n, H, W, 3] frames -> float [n, C, h, w] (resize, normalise, on the device);
            applied once per frame however many windows share it, `chunk` frames per call.
    """
    needed = plan.needed()
    last_needed = plan.frames.max(axis=1)  # [W] the frame that completes each window
    first_needed = plan.frames.min(axis=1)
    held: Dict[int, torch.Tensor] = {}  # the ring: prepared frames still needed, by source index
    pending: List[Tuple[int, np.ndarray]] = []
    next_window = 0

    def ready(upto: int, final: bool) -> Iterator[Tuple[int, torch.Tensor]]:
        nonlocal next_window
        while next_window < len(plan):
            end = next_window
            while end < len(plan) and end - next_window < batch_size and last_needed[end] <= upto:
                end += 1
            if end == next_window or (end - next_window < batch_size and end < len(plan) and not final):
                return  # wait for a full batch, unless no more frames will come
            rows = plan.frames[next_window:end]  # [B, T]
            clips = torch.stack([torch.stack([held[int(i)] for i in row], 1) for row in rows])  # [B, C, T, h, w]
            first = next_window
            next_window = end
            keep_from = first_needed[end] if end < len(plan) else np.iinfo(np.int64).max
            for i in [i for i in held if i < keep_from]:
                del held[i]
            yield first, clips

    def flush() -> None:
        prepared = prepare(torch.from_numpy(np.stack([f for _, f in pending])))  # [n, C, h, w]
        held.update({i: prepared[k] for k, (i, _) in enumerate(pending)})
        pending.clear()

    if not len(plan):
        return
    last_index = -1
    for index, frame in frames:
        if index not in needed:
            continue
        pending.append((index, frame))
        last_index = index
        if len(pending) >= chunk:
            flush()
            yield from ready(last_index, final=False)
    if pending:
        flush()
    yield from ready(last_index, final=True)
    if next_window < len(plan):
        raise ValueError(f"frames ended at {last_index}, before frame {int(last_needed[next_window])} "
                         f"of window {next_window}")

