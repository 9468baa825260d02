"""Every backend reads real-world files as the official reader numbers them: frame i is the i-th frame
decoded in presentation order, the count is the number of frames the stream holds.

The corpus (tests/quirk_corpus.py) is encoded once per session by the system's ffmpeg (Debian's in CI):
the containers and codecs of the paper's data sets and of typical downloads. The truth for each file
is FFmpeg's command-line decode of every frame (`-fps_mode passthrough`: no frame dropped or
repeated; an edit list's hidden pre-roll not shown). Counts and chosen frames must be equal; pixels
may differ by colour-conversion rounding only: at most 3 levels on 8-bit sources; 10-bit sources go
through a different swscale path in each backend (mean difference <= 6 levels, the right frame
nonetheless). A backend's known failure is an xfail(strict): it must still fail, so a fix is noticed.
"""
import subprocess

import av
import numpy as np
import pytest
import torch

from datasets import video_dataset
from datasets.annotations import Sample
from datasets.decoding import VideoError, open_video
from datasets.video_dataset import AugmentConfig, ClipConfig, VideoClipDataset
from helpers import backend_params
from quirk_corpus import ENCODERS, RECIPES, find_ffmpeg, make_corpus

pytestmark = [pytest.mark.skipif(find_ffmpeg() is None, reason="the quirk corpus needs ffmpeg (apt-get install ffmpeg)"),
              pytest.mark.slow]  # dozens of ffmpeg encodes, then 120 decodes

TEN_BIT = {"h264_10bit_mkv", "hevc_10bit_mp4"}
# (backend, file) -> why the backend reads other frames than the truth (DATASET.md "Backends").
KNOWN = {
    ("decord", "mpeg4_xvid_bframes_avi"): "decord seeks to a keyframe's decode-order position (B-frames)",
    ("decord", "mpeg4_dx50_bframes_avi"): "decord seeks to a keyframe's decode-order position (B-frames)",
    ("decord", "h264_bpyramid_open_gop_mp4"): "decord's open-GOP seek: frames 3 later after a seek",
    ("decord", "h264_edit_list_mp4"): "decord counts the pre-roll an edit list hides (75, not 62 frames shown)",
    ("decord", "h264_mpegts"): "decord's first seek skips the first GOP of an MPEG-TS stream",
    ("decord", "mpeg2_mpegts"): "decord's first seek skips the first GOP of an MPEG-TS stream",
    ("decord", "hevc_10bit_mp4"): "decord's 10-bit HEVC frames differ from a full decode",
    ("decord", "hevc_mp4"): "decord's bundled (older) HEVC decoder differs by up to 53 levels on some frames",
    ("decord", "av1_mp4"): "decord 0.6 cannot open AV1",
    ("decord", "truncated_tail_mp4"): "decord cannot open a file whose last packet is cut off",
    ("torchcodec", "mpeg4_xvid_bframes_avi"): "torchcodec places MPEG-4 AVI B-frames one or two frames off",
    ("torchcodec", "mpeg4_dx50_bframes_avi"): "torchcodec fails on batches of MPEG-4 AVI B-frames",
    ("torchcodec", "h264_bpyramid_open_gop_mp4"): "torchcodec fails on batches of open-GOP frames",
    ("torchcodec", "h264_mpegts"): "torchcodec fails on batches of MPEG-TS frames",
    ("torchcodec", "mpeg2_mpegts"): "torchcodec fails on batches of MPEG-TS frames",
    ("torchcodec", "truncated_tail_mp4"): "torchcodec fails on the cut-off packet",
}
BACKENDS = backend_params()  # every CPU backend of datasets.decoding


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("quirk_corpus")))


@pytest.fixture(scope="session")
def truths():
    cache = {}
    return lambda path: cache[path] if path in cache else cache.setdefault(path, truth(path))


def truth(path: str) -> torch.Tensor:
    """Every frame of `path` from FFmpeg's command line: uint8 [N, C, H, W]."""
    with av.open(path) as container:
        height, width = container.streams.video[0].height, container.streams.video[0].width
    raw = subprocess.run([find_ffmpeg(), "-v", "quiet", "-i", path, "-map", "0:v:0", "-fps_mode",
                          "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True).stdout
    n = len(raw) // (height * width * 3)
    frames = np.frombuffer(raw[:n * height * width * 3], np.uint8).reshape(n, height, width, 3)
    return torch.from_numpy(frames.copy()).permute(0, 3, 1, 2)


def _file(corpus, name):
    if name not in corpus:
        pytest.skip(f"this ffmpeg has no {ENCODERS[name]} encoder")
    return corpus[name]


def _assert_same_frames(frames, reference, all_frames, indices, name):
    diff = (frames.int() - reference.int()).abs()  # [T, C, H, W]
    if name in TEN_BIT:
        assert diff.float().mean() <= 6, (name, indices)
        # The nearest frame of the whole decode is the one asked for: the right frame, other rounding.
        sub = (..., slice(None, None, 4), slice(None, None, 4))  # every 4th pixel is enough to tell frames apart
        distance = (frames[sub].float()[:, None] - all_frames[sub].float()[None]).abs().mean((2, 3, 4))  # [T, N]
        assert distance.argmin(1).tolist() == list(indices), name
    else:
        assert diff.max() <= 3, (name, indices, diff.max())


def _cases():
    for backend in BACKENDS:
        name_of = backend.values[0] if hasattr(backend, "values") else backend
        for name in RECIPES:
            marks = list(getattr(backend, "marks", ()))
            if (name_of, name) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[name_of, name]))
            yield pytest.param(name_of, name, marks=marks, id=f"{name_of}-{name}")


@pytest.mark.parametrize("backend,name", list(_cases()))
def test_counts_and_frames_equal_a_full_decode(corpus, truths, backend, name):
    path = _file(corpus, name)
    every = truths(path)
    n = len(every)
    reader = open_video(path, backend)
    if name == "truncated_tail_mp4":  # the cut-off last packet holds no frame: asking for it is an error
        assert reader.num_frames == n + 1
        with pytest.raises(VideoError, match=f"frame {n}"):
            open_video(path, backend).get_frames([n - 1, n])
    else:
        assert reader.num_frames == n, name
    if name.startswith("truncated_tail"):  # the last frame is damaged: each decoder conceals it its own way
        n -= 1
    for indices in ([n - 1, 0], [n // 2, n // 2 + 3, n - 1], list(range(0, n, 3)), [2 * n // 3, n // 3, n // 3]):
        fresh = open_video(path, backend)  # each read from a fresh reader: its seeks, not its position
        _assert_same_frames(fresh.get_frames(indices), every[indices], every, indices, name)
    _assert_same_frames(reader.get_frames([n // 3, 2]), every[[n // 3, 2]], every, [n // 3, 2], name)  # seek back


class _TruthReader:
    """A reader serving the command line's frames: the dataset's clips as they should be."""

    def __init__(self, frames: torch.Tensor, path: str):
        self.num_frames, self.path, self._frames = len(frames), path, frames

    def get_frames(self, indices):
        return self._frames[list(indices)]


@pytest.mark.parametrize("name", sorted(set(RECIPES) - TEN_BIT - {"truncated_tail_mp4", "truncated_tail_avi"}))
def test_dataset_clips_of_the_default_reader(corpus, truths, name, monkeypatch):
    """The train/val/test clips VideoClipDataset builds (default backend) are those of the truth's frames."""
    path = _file(corpus, name)
    clip = ClipConfig(num_frames=8, sampling_rate=2, input_size=64, short_side_size=64)
    samples = [Sample(path, 0)]
    kinds = [("train", {"augment": AugmentConfig(auto_augment=None)}), ("val", {}),
             ("test", {"test_num_segment": 2, "test_num_crop": 3, "test_segment_cache": False})]
    ours = {mode: [VideoClipDataset(samples, mode, clip=clip, **kw)[i] for i in range(2 if mode == "test" else 1)]
            for mode, kw in kinds}
    every = truths(path)
    monkeypatch.setattr(video_dataset, "read_video", lambda p, backend, read, *a: read(_TruthReader(every, p)))
    for mode, kw in kinds:
        for i, item in enumerate(ours[mode]):
            expected = VideoClipDataset(samples, mode, clip=clip, **kw)[i]
            assert item["bad"] == [] and expected["bad"] == []
            assert (item["video"] - expected["video"]).abs().max() <= 3 / 255 / 0.225 + 1e-6, (name, mode, i)
