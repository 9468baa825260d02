"""Both decoders return the same frames, with seeking, for every container."""
import av
import numpy as np
import pytest
import torch

from datasets.decoding import PyAVReader, VideoError, open_video
from datasets.synthetic import write_video


def _moving_bar(frames=60, height=48, width=64):
    clip = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        clip[t, :, t % width] = 255
        clip[t, t % height, :, 1] = 200
    return clip


def _write_short_gop(path, clip, gop=8):
    container = av.open(path, "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
    stream.codec_context.gop_size = gop
    for img in clip:
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


@pytest.mark.parametrize("codec,ext", [("h264", "mp4"), ("vp9", "webm"), ("mpeg4", "avi"), ("gop8", "mp4")])
def test_backends_return_identical_frames(tmp_path, codec, ext):
    clip = _moving_bar()
    path = str(tmp_path / f"v.{ext}")
    if codec == "gop8":
        _write_short_gop(path, clip)
    else:
        write_video(path, clip, fps=25, codec=codec)
    indices = [41, 43, 45, 47, 59, 59]  # late frames: the PyAV reader seeks
    a, b = open_video(path, "decord"), open_video(path, "pyav")
    assert a.num_frames == b.num_frames == 60
    fa, fb = a.get_frames(indices), b.get_frames(indices)
    assert fa.shape == (6, 3, 48, 64) and fa.dtype == torch.uint8
    assert torch.equal(fa, fb)
    # The frames really are the requested ones: the bar sits in column t.
    assert [int(f[0, 24].float().argmax()) for f in fb[:4]] == [41, 43, 45, 47]
    assert torch.equal(b.get_frames([0, 1]), a.get_frames([0, 1]))  # a second read seeks back


def test_pyav_reports_frames_past_the_end(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, _moving_bar(12), fps=25, codec="h264")
    reader = PyAVReader(path)
    with pytest.raises(VideoError, match="stream ends before frame 20"):
        reader.get_frames([5, 20])


def test_unknown_backend(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(str(path), _moving_bar(4), fps=25, codec="h264")
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(str(path), "opencv")
