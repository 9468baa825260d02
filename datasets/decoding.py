"""Video decoding: decord (default) or PyAV, one open per sample, errors that name the file.

A reader exposes `num_frames` and `get_frames(indices) -> uint8 [T, C, H, W]`. Every failure
(missing, empty, undecodable or truncated file, no frames) raises `VideoError(path, reason)`,
which the dataset turns into a counted, reported, replaced sample.
"""
import os
from typing import Sequence

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
    """PyAV (FFmpeg) decoding: more forgiving of odd files than decord.

    The frame count comes from the container, or from counting packets (no decoding) when the
    container does not store it. Reading seeks to the keyframe before the first wanted frame
    (frame index = pts x frame rate, as decord) and decodes forward, converting only the wanted
    frames to RGB; streams without timestamps are decoded from the start.
    """

    def __init__(self, path: str, num_threads: int = 1):
        import av

        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
            self.num_frames = self._stream.frames or self._count_packets()
        except Exception as e:
            raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = num_threads
        self.path = path
        rate, start = self._stream.average_rate, self._stream.start_time
        self._pts_per_frame = (1 / (rate * self._stream.time_base)) if rate and self._stream.time_base else None
        self._start_pts = start or 0

    def _count_packets(self) -> int:
        count = sum(1 for packet in self._container.demux(self._stream) if packet.size)
        self._container.seek(0)
        return count

    def _frame_index(self, frame) -> "int | None":
        if frame.pts is None or self._pts_per_frame is None:
            return None
        return round(float((frame.pts - self._start_pts) / self._pts_per_frame))

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        wanted, last = set(indices), max(indices)
        first = min(indices)
        if first > 0 and self._pts_per_frame is not None:
            self._container.seek(self._start_pts + int(first * self._pts_per_frame), backward=True,
                                 any_frame=False, stream=self._stream)
        else:
            self._container.seek(0)
        found = {}
        position = None  # index of the next decoded frame
        try:
            for frame in self._container.decode(self._stream):
                index = self._frame_index(frame) if position is None else position
                if index is None:  # no timestamps: count from the start
                    self._container.seek(0)
                    return self._decode_from_start(indices)
                if index in wanted:
                    found[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
                position = index + 1
        except Exception as e:
            raise VideoError(self.path, f"decoding failed near frame {position} ({_first_line(e)})",
                             decoder_failed=True) from None
        return self._stack(found, indices)

    def _decode_from_start(self, indices: Sequence[int]) -> torch.Tensor:
        wanted, last, found = set(indices), max(indices), {}
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                if index in wanted:
                    found[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
        except Exception as e:
            raise VideoError(self.path, f"decoding failed ({_first_line(e)})", decoder_failed=True) from None
        return self._stack(found, indices)

    def _stack(self, found: dict, indices: Sequence[int]) -> torch.Tensor:
        missing = sorted(set(indices) - set(found))
        if missing:
            raise VideoError(self.path, f"stream ends before frame {missing[0]} of {self.num_frames}",
                             decoder_failed=True)
        frames = np.stack([found[i] for i in indices])  # [T, H, W, C]
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
