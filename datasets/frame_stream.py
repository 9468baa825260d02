"""Every frame of a video, front to back, decoded once (feature extraction over whole videos).

The readers of datasets/decoding.py answer "these frame indices of a clip"; a sliding window over an
hour of video wants the frames in order instead. With PyAV the stream is decoded sequentially here
(no seek; only the frames the caller wants are converted to RGB, through one swscale context).
decord and torchcodec are read through their public readers in consecutive chunks of indices, which
both decode forward without seeking back (datasets/decoding.py's module docstring).

Frame i is the i-th frame in presentation order, as the readers of datasets/decoding.py index;
`num_frames` is their count (container or packet count), so a window plan made before decoding
holds unless the stream ends early, which raises VideoError naming the file.
"""
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from datasets.decoding import VideoError, _first_line, open_video

CHUNK = 32  # frames per get_frames call of the chunked (decord, torchcodec) readers


@dataclass(frozen=True)
class VideoInfo:
    """What the container says before decoding: frame count, mean frame rate (None when unknown), size."""
    num_frames: int
    fps: Optional[Fraction]
    height: int
    width: int


def probe(path: str, backend: str = "pyav") -> VideoInfo:
    """Frame count (as the `backend` reader counts), frame rate and size of `path`'s first video stream.

    Raises VideoError (missing, empty, unreadable, no frames) naming the file.
    """
    import av

    num_frames = open_video(path, backend).num_frames  # also refuses missing / empty / frameless files
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(num_frames, Fraction(rate) if rate else None, stream.height, stream.width)
    except Exception as e:
        raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None


def iter_frames(path: str, wanted: Callable[[int], bool], last: int, backend: str = "pyav",
                num_threads: int = 1) -> Iterator[Tuple[int, np.ndarray]]:
    """(index, uint8 [H, W, 3] RGB) of every frame `wanted(index)` accepts, in increasing order,
    up to and including frame `last`; raises VideoError (naming the file) when decoding fails or
    the stream ends before `last`."""
    if backend == "pyav":
        yield from _pyav_frames(path, wanted, last, num_threads)
        return
    reader = open_video(path, backend, num_threads)
    indices = [i for i in range(last + 1) if wanted(i)]
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start:start + CHUNK]
        frames = reader.get_frames(chunk).permute(0, 2, 3, 1).numpy()  # [n, H, W, 3]
        yield from zip(chunk, frames)


def _pyav_frames(path: str, wanted: Callable[[int], bool], last: int,
                 num_threads: int) -> Iterator[Tuple[int, np.ndarray]]:
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
    index = -1
    try:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", num_threads
        reformatter = av.video.reformatter.VideoReformatter()  # one swscale context for the whole video
        frames = container.decode(stream)
        while index < last:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as e:
                raise VideoError(path, f"decoding failed after frame {index} ({_first_line(e)})",
                                 decoder_failed=True) from None
            index += 1
            if wanted(index):
                yield index, reformatter.reformat(frame, format="rgb24", threads=num_threads).to_ndarray()
    finally:
        container.close()
    if index < last:
        raise VideoError(path, f"stream ends after {index + 1} frames, before frame {last}", decoder_failed=True)
