"""What the generated data sets (python -m datasets.synthetic, python -m datasets.digits) share:
the splits, the directions of travel, the encoder settings that make the same seed give the same
bytes, and the writers of their videos and lists.
"""
from typing import Sequence

import av
import numpy as np

SPLITS = ("train", "val", "test")
# Direction of travel in image coordinates (x to the right, y downwards).
DIRECTIONS = (("left_to_right", (1, 0)), ("right_to_left", (-1, 0)),
              ("top_to_bottom", (0, 1)), ("bottom_to_top", (0, -1)))
# codec name -> (encoder, file extension, encoder options). CRF/quality settings keep the small
# objects sharp; VP9 uses its realtime mode because test suites write these files on the fly.
# The same seed must give the same bytes. Measured here: x264's macroblock-tree rate control
# gives different bytes from one encode to the next inside a process (mbtree=0 fixes it), and
# libvpx's real-time deadline depends on timing; one thread each for good measure.
CODECS = {
    "h264": ("libx264", ".mp4", {"crf": "18", "preset": "fast", "threads": "1", "x264-params": "mbtree=0"}),
    "vp9": ("libvpx-vp9", ".webm", {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "5", "threads": "1"}),
    "mpeg4": ("mpeg4", ".avi", {"qscale": "3", "threads": "1"}),
}


def write_video(path: str, frames: np.ndarray, fps: int = 25, codec: str = "h264") -> None:
    """Encode uint8 frames [T, H, W, 3] (RGB, even H and W) to `path`; the container follows the extension."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 video needs even height and width, got {height}x{width}")
    encoder, _, options = CODECS[codec]
    # bitexact: no random segment ids or library version strings that differ between runs.
    with av.open(path, "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(encoder, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the frames the encoder still holds


def write_lines(path: str, lines: Sequence[str]) -> str:
    """Write `lines` (each with its newline) to `path` with Unix newlines; returns `path`."""
    with open(path, "w", newline="\n") as f:
        f.writelines(lines)
    return path
