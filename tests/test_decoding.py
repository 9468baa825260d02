"""The decoders return the same frames, with seeking, for every container; torchcodec's bad-file errors,
CUDA fallback and install messages; torchcodec through the dataset and the data-loader benchmark."""
import json
import logging
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from datasets.annotations import Sample, read_annotations
from datasets.decoding import PyAVReader, VideoError, open_video
from datasets.synthetic import make_dataset, write_broken_files, write_video
from datasets.video_dataset import AugmentConfig, ClipConfig, VideoClipDataset, collate_clips
from helpers import needs_torchcodec


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


# ------------------------------------------------------------------------------- torchcodec


def _textured(frames=60, height=48, width=64):
    """Random colours shifted one column per frame: chroma detail that tests colour conversion."""
    base = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.stack([np.roll(base, t, axis=1) for t in range(frames)])


def _write_late_start(path, clip, start_frame=250, fps=25):
    """A Matroska stream whose first timestamp is start_frame / fps seconds (10 s), as cut clips have."""
    container = av.open(path, "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
    stream.codec_context.time_base = Fraction(1, fps)
    for t, img in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = start_frame + t, Fraction(1, fps)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()


def _write(path, content, codec):
    if codec == "gop8":
        _write_short_gop(path, content)
    elif codec == "late_start":
        _write_late_start(path, content)
    else:
        write_video(path, content, fps=25, codec=codec)


@needs_torchcodec
@pytest.mark.parametrize("content", [_moving_bar, _textured])
@pytest.mark.parametrize("codec,ext", [("h264", "mp4"), ("vp9", "webm"), ("mpeg4", "avi"), ("gop8", "mp4"),
                                       ("late_start", "mkv")])
def test_torchcodec_frames_equal_decord_and_pyav(tmp_path, content, codec, ext):
    path = str(tmp_path / f"v.{ext}")
    _write(path, content(), codec)
    readers = {backend: open_video(path, backend) for backend in ("torchcodec", "decord", "pyav")}
    assert {r.num_frames for r in readers.values()} == {60}
    for indices in ([41, 43, 45, 47, 59, 59], [0, 1, 2], [30, 10, 50]):  # seek forward, back, unordered
        frames = {backend: r.get_frames(indices) for backend, r in readers.items()}
        assert frames["torchcodec"].shape == (len(indices), 3, 48, 64) and frames["torchcodec"].dtype == torch.uint8
        # Bit-exact: the three decode with FFmpeg and convert to RGB with swscale's same defaults.
        assert torch.equal(frames["torchcodec"], frames["decord"])
        assert torch.equal(frames["torchcodec"], frames["pyav"])
    if content is _moving_bar:
        assert [int(f[0, 24].float().argmax()) for f in frames["torchcodec"]] == [30, 10, 50]


@needs_torchcodec
def test_torchcodec_counts_the_frames_an_edit_list_shows(tmp_path):
    """A clip cut without re-encoding (`ffmpeg -ss 1 -c copy`) keeps the frames from the keyframe on,
    with an edit list hiding the first second. torchcodec indexes the 35 frames shown (decord and PyAV
    report the header's 60, and frames 35-59 do not exist); transcoding the file removes the list."""
    import imageio_ffmpeg
    full, cut = str(tmp_path / "full.mp4"), str(tmp_path / "cut.mp4")
    write_video(full, _moving_bar(), fps=25, codec="h264")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-ss", "1.0", "-i", full, "-c", "copy", cut],
                   check=True, timeout=60)
    reader = open_video(cut, "torchcodec")
    assert reader.num_frames == 35
    frames = reader.get_frames([0, 17, 34])
    assert [int(f[0, 24].float().argmax()) for f in frames] == [25, 42, 59]  # the bar sits in column t


@needs_torchcodec
def test_torchcodec_bad_files_give_the_same_errors(tmp_path):
    broken = {kind: str(tmp_path / rel) for kind, rel in write_broken_files(str(tmp_path)).items()}
    for kind in ("missing", "empty", "truncated", "garbage"):
        reasons = {}
        for backend in ("torchcodec", "decord", "pyav"):
            with pytest.raises(VideoError) as info:
                open_video(broken[kind], backend)
            assert str(info.value).startswith(broken[kind] + ": ")
            reasons[backend] = info.value.reason
        if kind in ("missing", "empty"):
            assert len(set(reasons.values())) == 1, reasons
        else:  # the decoders word the failure differently inside the parentheses
            assert all(r.startswith("cannot open (") for r in reasons.values()), reasons
            assert "Invalid data found" in reasons["torchcodec"] and ".cpp:" not in reasons["torchcodec"]
    assert open_video(broken["too_short"], "torchcodec").num_frames == 3
    short = str(tmp_path / "short.mp4")
    write_video(short, _moving_bar(12), fps=25, codec="h264")
    for backend in ("torchcodec", "pyav"):
        with pytest.raises(VideoError, match=r"short.mp4: stream ends before frame 20 of 12$"):
            open_video(short, backend).get_frames([5, 20])


@needs_torchcodec
@pytest.mark.parametrize("mode", ["train", "val"])
def test_torchcodec_through_the_dataset_with_workers(tmp_path, mode):
    root = str(tmp_path)
    make_dataset(root, num_train=4, num_val=4, num_test=1, frames=24, height=48, width=64, seed=0)
    broken = write_broken_files(root)
    samples = read_annotations(f"{root}/{mode}.csv", root) + [Sample(f"{root}/{broken['garbage']}", 0)]
    clip = ClipConfig(num_frames=8, sampling_rate=2, input_size=32, short_side_size=32)
    augment = AugmentConfig(auto_augment=None, reprob=0)

    def load(backend, workers):
        ds = VideoClipDataset(samples, mode, clip, augment, video_backend=backend)
        loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate_clips)
        return next(iter(loader))

    ours, reference = load("torchcodec", 2), load("pyav", 0)
    assert ours["video"].shape == (5, 3, 8, 32, 32)
    assert torch.equal(ours["video"], reference["video"])  # same frames, so the same augmented clips
    assert torch.equal(ours["index"], reference["index"])
    assert [path for path, _ in ours["bad"]] == [samples[-1].path]  # reported and replaced
    assert ours["bad"][0][1].startswith("cannot open (")


@needs_torchcodec
@pytest.mark.parametrize("available,bad_fork,reason", [
    (False, False, "no CUDA device is available"),
    (True, True, "this DataLoader worker was forked from a process that already uses CUDA"),
])
def test_torchcodec_cuda_falls_back_to_the_cpu_with_one_warning(tmp_path, monkeypatch, caplog, available, bad_fork,
                                                                reason):
    from datasets import decoding
    path = str(tmp_path / "v.mp4")
    write_video(path, _moving_bar(), fps=25, codec="h264")
    monkeypatch.setattr(decoding, "_CUDA_UNUSABLE", None)
    monkeypatch.setattr(decoding, "_FALLBACK_LOGGED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: bad_fork)
    with caplog.at_level(logging.WARNING, logger="datasets.decoding"):
        readers = [open_video(path, "torchcodec_cuda") for _ in range(3)]
    warnings = [r.getMessage() for r in caplog.records if "torchcodec_cuda" in r.getMessage()]
    assert len(warnings) == 1 and f"{reason}; decoding on the CPU" in warnings[0]
    assert all(r.device == "cpu" for r in readers)
    assert torch.equal(readers[0].get_frames([3, 40]), open_video(path, "pyav").get_frames([3, 40]))


@needs_torchcodec
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA decoding works here: nothing to fall back from")
def test_torchcodec_cuda_falls_back_when_cuda_decoding_fails(tmp_path, monkeypatch, caplog):
    """CUDA looks available but torchcodec cannot decode on it (here: no driver; elsewhere a CPU-only
    build): the file is opened on the CPU, one warning names torchcodec's error."""
    from datasets import decoding
    path = str(tmp_path / "v.mp4")
    write_video(path, _moving_bar(), fps=25, codec="h264")
    monkeypatch.setattr(decoding, "_CUDA_UNUSABLE", None)
    monkeypatch.setattr(decoding, "_FALLBACK_LOGGED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    with caplog.at_level(logging.WARNING, logger="datasets.decoding"):
        first, second = open_video(path, "torchcodec_cuda"), open_video(path, "torchcodec_cuda")
    warnings = [r.getMessage() for r in caplog.records if "torchcodec_cuda" in r.getMessage()]
    assert len(warnings) == 1 and "torchcodec cannot decode on CUDA here (" in warnings[0]
    assert first.device == second.device == "cpu" and first.num_frames == 60
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match="garbage.mp4: cannot open"):  # a bad file stays a bad file
        open_video(str(garbage), "torchcodec_cuda")


@needs_torchcodec
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device with NVDEC")
def test_torchcodec_nvdec_frames_match_the_cpu(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, _moving_bar(), fps=25, codec="h264")
    gpu, cpu = open_video(path, "torchcodec_cuda"), open_video(path, "torchcodec")
    indices = [41, 43, 45, 47, 0]
    a, b = gpu.get_frames(indices), cpu.get_frames(indices)
    assert a.device.type == "cpu" and a.shape == b.shape
    assert [int(f[0, 24].float().argmax()) for f in a] == [41, 43, 45, 47, 0]  # the same frames
    assert (a.float() - b.float()).abs().mean() < 2  # NVDEC converts YUV to RGB with its own kernel


def test_torchcodec_missing_names_the_package(monkeypatch, tmp_path):
    path = tmp_path / "v.mp4"
    write_video(str(path), _moving_bar(4), fps=25, codec="h264")
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    with pytest.raises(ImportError, match=r"needs the torchcodec package: `pip install torchcodec`.*apt-get install "
                                          r"ffmpeg.*conda install ffmpeg.*Import failed: .*torchcodec"):
        open_video(str(path), "torchcodec")


@pytest.mark.slow
@needs_torchcodec
def test_missing_ffmpeg_libraries_are_named(tmp_path):
    """torchcodec itself imports without FFmpeg; our error says what to install and what failed to load."""
    path = tmp_path / "v.mp4"
    write_video(str(path), _moving_bar(4), fps=25, codec="h264")
    script = textwrap.dedent(f"""
        import torch
        load = torch.ops.load_library
        def no_ffmpeg(library):  # what the dynamic loader says on a machine without FFmpeg 5
            if "libtorchcodec_core" in str(library) or "libtorchcodec_custom_ops" in str(library):
                raise OSError("libavutil.so.57: cannot open shared object file: No such file or directory")
            return load(library)
        torch.ops.load_library = no_ffmpeg
        from datasets.decoding import open_video
        try:
            open_video({str(path)!r}, "torchcodec")
        except ImportError as e:
            print(e)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    message = out.stdout.strip()
    assert "torchcodec needs FFmpeg's shared libraries" in message, out.stderr[-2000:]
    assert "`apt-get install ffmpeg`" in message and "`conda install ffmpeg`" in message
    assert ("torchcodec found none it can load: FFmpeg 9, 8, 7, 6, 5, 4: OSError: libavutil.so.57: "
            "cannot open shared object file") in message


@needs_torchcodec
def test_bench_compares_backends_side_by_side(tmp_path, capsys):
    import importlib.util
    root = str(tmp_path)
    make_dataset(root, num_train=3, num_val=1, num_test=1, frames=24, height=48, width=64, seed=0)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_dataloader.py")
    spec = importlib.util.spec_from_file_location("bench_dataloader", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(bench.get_args(["--csv", f"{root}/train.csv", "--data_path", root, "--mode", "val",
                                   "--num_frames", "8", "--input_size", "32", "--num_items", "3", "--clock", "cpu",
                                   "--backends", "decord", "pyav", "torchcodec"]))
    finally:
        torch.set_num_threads(threads)  # the benchmark sets one thread
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["backend"] for r in records] == ["decord", "pyav", "torchcodec"]
    for r in records:
        assert r["decode_ms"] > 0 and r["clips_per_s_per_core"] > 0 and r["clock"] == "cpu"
