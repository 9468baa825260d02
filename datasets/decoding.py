"""Video decoding: decord (default) or PyAV, one open per sample, errors that name the file.

A reader exposes `num_frames` and `get_frames(indices) -> uint8 [T, C, H, W]`. Every failure
(missing, empty, undecodable or truncated file, no frames) raises `VideoError(path, reason)`,
which the dataset turns into a counted, reported, replaced sample.
"""
import os
from typing import List, Sequence

import numpy as np
import torch

BACKENDS = ("decord", "pyav")


class VideoError(Exception):
    """`decoder_failed`: a decoder rejected the file (not missing, empty or too short), so
    another backend may still read it."""

    def __init__(self, path: str, reason: str, decoder_failed: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.decoder_failed = path, reason, decoder_failed


class DecordReader:
    """Random access through decord's frame index (seeks from the nearest keyframe)."""

    def __init__(self, path: str, num_threads: int = 1):
        import decord  # imported here: optional where only PyAV is installed

        try:
            self._vr = decord.VideoReader(path, num_threads=num_threads, ctx=decord.cpu(0))
        except Exception as e:  # decord raises its own DECORDError and RuntimeError
            raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
        self.path = path
        self.num_frames = len(self._vr)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        try:
            frames = self._vr.get_batch(list(indices)).asnumpy()  # [T, H, W, C]
        except Exception as e:
            raise VideoError(self.path, f"decoding frames {min(indices)}-{max(indices)} failed "
                                        f"({_first_line(e)})", decoder_failed=True) from None
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, C, H, W]


class PyAVReader:
    """Sequential decoding with PyAV (FFmpeg): slower on long videos, more forgiving of odd files.

    Frames are decoded from the start up to the last requested index; when the container does
    not store a frame count, the whole stream is decoded once to count it and kept.
    """

    def __init__(self, path: str, num_threads: int = 1):
        import av

        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
        except Exception as e:
            raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = num_threads
        self.path = path
        self._decoded: List[np.ndarray] = []
        self.num_frames = self._stream.frames
        if self.num_frames <= 0:
            self._decode_until(None)
            self.num_frames = len(self._decoded)

    def _decode_until(self, last: "int | None") -> None:
        try:
            for frame in self._container.decode(self._stream):
                self._decoded.append(frame.to_ndarray(format="rgb24"))
                if last is not None and len(self._decoded) > last:
                    return
        except Exception as e:
            raise VideoError(self.path, f"decoding failed after {len(self._decoded)} frames "
                                        f"({_first_line(e)})", decoder_failed=True) from None

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        last = max(indices)
        if last >= len(self._decoded):
            self._decode_until(last)
        if last >= len(self._decoded):
            raise VideoError(self.path, f"stream ends after {len(self._decoded)} of {self.num_frames} frames",
                             decoder_failed=True)
        frames = np.stack([self._decoded[i] for i in indices])  # [T, H, W, C]
        return torch.from_numpy(frames).permute(0, 3, 1, 2)

    def __del__(self):
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()


def open_video(path: str, backend: str = "decord", num_threads: int = 1):
    """Open `path` with `backend`; missing and empty files fail before any decoder sees them."""
    if not os.path.exists(path):
        raise VideoError(path, "missing")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file")
    if backend == "decord":
        reader = DecordReader(path, num_threads)
    elif backend == "pyav":
        reader = PyAVReader(path, num_threads)
    else:
        raise ValueError(f"unknown video backend {backend!r}; choose from {BACKENDS}")
    if reader.num_frames <= 0:
        raise VideoError(path, "no frames")
    return reader


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
