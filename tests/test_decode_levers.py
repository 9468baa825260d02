"""Decoding less gives the same frames: PyAV's skipped non-reference frames and keyframe seeks on real
x264 encodings (B-frame pyramids, open GOPs, frame threading, no timestamps), the test segments of a
video from one pass (also through a DataLoader worker), opt-in decoder-side scaling, the transcode
recipe for cheap decoding, and the benchmark's side-by-side variants."""
import importlib.util
import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from datasets import transforms as T
from datasets import video_dataset
from datasets.annotations import read_annotations
from datasets.decoding import SCALING_BACKENDS, DecodeOptions, VideoError, open_video
from datasets.synthetic import make_dataset, render_clip, write_video
from datasets.transcode import EncodeSettings, find_ffmpeg, transcode_tree
from datasets.video_dataset import ClipConfig, VideoClipDataset, collate_clips
from helpers import backend_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFF = DecodeOptions(skip_nonref=False, keyframe_seek=False)
# x264 settings -> what they exercise. b-adapt=0 keeps the B-frame pattern fixed, scenecut=0 the GOP.
ENCODINGS = {
    "x264_default": "",  # bframes=3, b-pyramid=normal: some B-frames are references
    "pyramid_gop12": "keyint=12:min-keyint=12:scenecut=0:bframes=3:b-pyramid=normal:b-adapt=0",
    "no_pyramid_gop8": "keyint=8:min-keyint=8:scenecut=0:bframes=3:b-pyramid=none:b-adapt=0",
    "open_gop12": "keyint=12:min-keyint=12:scenecut=0:open-gop=1:bframes=3:b-adapt=0",
}
INDEX_SETS = ([4 * i for i in range(16)], [0, 1, 2, 3], [5, 17, 33, 34, 60, 90, 119], [90, 3, 90, 47, 119, 0])


def _moving_bar(frames=120, height=48, width=64):
    """A white column at x = t % width and a green row at y = 3t % height: frame t is recognisable."""
    clip = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        clip[t, :, t % width] = 255
        clip[t, (3 * t) % height, :, 1] = 200
    return clip


def _bar_positions(frames: torch.Tensor):
    return [int(f[0, 0].float().argmax()) for f in frames]  # column of the white bar in row 0


def _encode(path, x264_params, container_format=None, clip=None):
    clip = _moving_bar() if clip is None else clip
    options = {"threads": "1", **({"x264-params": x264_params} if x264_params else {})}
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for img in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def _full_decode(path, indices):
    """Every frame from the first, in presentation order, no seeking: the ground truth."""
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)


def _frames(path, indices, options=DecodeOptions(), backend="pyav", threads=1):
    reader = open_video(path, backend, threads, options)
    return reader.get_frames(indices), getattr(reader, "frames_decoded", None)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_levers_give_the_frames_of_a_full_decode(tmp_path, encoding, threads):
    path = str(tmp_path / "v.mp4")
    _encode(path, ENCODINGS[encoding])
    for indices in INDEX_SETS:
        reference = _full_decode(path, indices)
        for options in (DecodeOptions(), OFF, DecodeOptions(keyframe_seek=False), DecodeOptions(skip_nonref=False)):
            frames, _ = _frames(path, indices, options, threads=threads)
            assert torch.equal(frames, reference), (encoding, indices, options)
        assert _bar_positions(reference) == [i % 64 for i in indices]
        # decord agrees on closed GOPs. On open GOPs it takes a keyframe's position in decode order
        # for its frame index and returns frames 3 later after seeking to one (seen: 36 for 33).
        if encoding != "open_gop12":
            assert torch.equal(_frames(path, indices, backend="decord")[0], reference)


def test_each_lever_decodes_fewer_frames(tmp_path):
    """Exactness alone would pass with the levers doing nothing: count what the decoder returned."""
    path = str(tmp_path / "v.mp4")
    _encode(path, ENCODINGS["no_pyramid_gop8"])
    dense, sparse = list(range(40, 104, 4)), [5, 33, 60, 90, 119]
    counts = {name: [_frames(path, indices, options)[1] for indices in (dense, sparse)]
              for name, options in {"off": OFF, "skip": DecodeOptions(keyframe_seek=False),
                                    "seek": DecodeOptions(skip_nonref=False), "both": DecodeOptions()}.items()}
    # Without B-frame references every unwanted B-frame is skipped: 3 of each 4 frames between the
    # wanted ones here. Keyframe seeks skip whole GOPs between the sparse frames.
    assert counts["skip"][0] < 0.6 * counts["off"][0]
    assert counts["seek"][1] < 0.6 * counts["off"][1]
    assert counts["both"][1] < min(counts["skip"][1], counts["seek"][1])


def test_open_gop_keyframes_are_not_seek_targets(tmp_path):
    """Open GOPs: frames decoded after such a keyframe are shown before it, so decoding cannot start
    there. The packet timeline marks only keyframes that start a closed GOP as places to seek to
    (here the first one), and the frames stay right."""
    path = str(tmp_path / "v.mp4")
    _encode(path, ENCODINGS["open_gop12"])
    reader = open_video(path, "pyav")
    frames = reader.get_frames([5, 60, 119])
    assert _bar_positions(frames) == [5, 60, 119 % 64]
    assert reader._timeline.keyframes == [0]
    _encode(str(tmp_path / "c.mp4"), ENCODINGS["pyramid_gop12"])
    closed = open_video(str(tmp_path / "c.mp4"), "pyav")
    assert closed._timeline.keyframes == list(range(0, 120, 12))


@pytest.mark.parametrize("kind", ["no_timestamps", "vp9_webm", "mpeg4_avi"])
def test_levers_on_other_streams(tmp_path, kind):
    """Raw H.264 carries no timestamps and cannot seek (decoded from the start); WebM's cues give
    the keyframes' pts; AVI indexes every packet."""
    clip = _moving_bar()
    if kind == "no_timestamps":
        path = str(tmp_path / "v.h264")
        _encode(path, ENCODINGS["no_pyramid_gop8"], container_format="h264")
    else:
        path = str(tmp_path / ("v.webm" if kind == "vp9_webm" else "v.avi"))
        write_video(path, clip, fps=25, codec="vp9" if kind == "vp9_webm" else "mpeg4")
    for indices in INDEX_SETS:
        frames, _ = _frames(path, indices)
        assert torch.equal(frames, _frames(path, indices, OFF)[0])
        assert torch.equal(frames, _full_decode(path, indices))
        assert _bar_positions(frames) == [i % 64 for i in indices]
        # decord cannot open raw H.264, and some of its MPEG-4 frames differ by 1 from a full decode.
        if kind == "vp9_webm":
            assert torch.equal(frames, _frames(path, indices, backend="decord")[0])


def _write_irregular(path, pts_of_frame, clip):
    """H.264 in Matroska with frame t at pts_of_frame(t) milliseconds (nominal 25 fps)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1",
                                                                    "x264-params": ENCODINGS["pyramid_gop12"]})
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, img in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts_of_frame(t), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.parametrize("kind", ["dropped_frame", "jitter"])
def test_irregular_timestamps(tmp_path, kind):
    """Variable frame rate: no frame in the slot of frame 50 (frames 50-89 shown one slot later), or
    odd frames 5/8 of a frame late. Frame i is the i-th frame shown, wherever the read starts (also
    wholly past the gap, where a reader placing frames by time x rate would be one frame off), as a
    full decode and decord number them."""
    clip = _moving_bar(90)
    pts = {"dropped_frame": lambda t: 40 * (t + (t >= 50)), "jitter": lambda t: 40 * t + 25 * (t % 2)}[kind]
    path = str(tmp_path / "v.mkv")
    _write_irregular(path, pts, clip)
    for indices in ([40, 48, 50, 52, 60], [0, 4, 8], [70, 75, 89]):
        frames, _ = _frames(path, indices)
        assert torch.equal(frames, _full_decode(path, indices)), indices
        assert _bar_positions(frames) == [i % 64 for i in indices]
        assert torch.equal(frames, _frames(path, indices, backend="decord")[0])


SCALING = backend_params(SCALING_BACKENDS)


@pytest.mark.parametrize("backend", SCALING)
def test_decoder_side_scaling(tmp_path, backend):
    path = str(tmp_path / "v.mp4")
    clip, _ = render_clip(np.random.default_rng(0), 0, frames=12, height=120, width=160)
    write_video(path, clip, fps=25, codec="h264")
    full, _ = _frames(path, [0, 5, 11], backend=backend)
    scaled, _ = _frames(path, [0, 5, 11], DecodeOptions(short_side=96), backend=backend)
    assert scaled.shape == (3, 3, 96, 128) and scaled.dtype == torch.uint8
    scaled = scaled.float()
    # Not the pixels of decode-then-resize (swscale scales the YUV planes, chroma at half size,
    # before converting; we convert, then resize RGB), but the same pictures: closer to them than
    # to the same frames in another order.
    resized = T.resize_short_side(full, 96, antialias=True).float()
    difference, other_order = (scaled - resized).abs().mean(), (scaled - resized.flip(0)).abs().mean()
    assert 0 < difference < 0.6 * other_order, (difference, other_order)
    if backend == "pyav":  # the reader's one reformatter gives what a fresh one per frame gives
        from datasets.decoding import SCALE_INTERPOLATION
        with av.open(path) as container:
            own = [f.to_ndarray(format="rgb24", width=128, height=96, interpolation=SCALE_INTERPOLATION)
                   for f in container.decode(video=0)]
        assert torch.equal(scaled, torch.from_numpy(np.stack([own[i] for i in (0, 5, 11)])).permute(0, 3, 1, 2).float())
    unchanged, _ = _frames(path, [0, 5, 11], DecodeOptions(short_side=160), backend=backend)  # never upscales
    assert torch.equal(unchanged, full)
    portrait = str(tmp_path / "portrait.mp4")
    write_video(portrait, clip.transpose(0, 2, 1, 3).copy(), fps=25, codec="h264")  # 120 wide, 160 high
    assert _frames(portrait, [0, 5], DecodeOptions(short_side=88), backend=backend)[0].shape == (2, 3, 117, 88)
    # 48 wide: decord 0.6 cannot copy its frames out at that width, so it decodes at full size.
    expected = (2, 3, 160, 120) if backend == "decord" else (2, 3, 64, 48)
    assert _frames(portrait, [0, 5], DecodeOptions(short_side=48), backend=backend)[0].shape == expected


def test_decoder_side_scaling_refuses_nvdec_and_names_a_bad_file(tmp_path):
    with pytest.raises(ValueError, match="needs one of the video backends .*, not 'torchcodec_cuda'"):
        open_video(str(tmp_path / "v.mp4"), "torchcodec_cuda", options=DecodeOptions(short_side=48))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="cannot open") as e:  # the size is read before decord opens it
        open_video(str(bad), "decord", options=DecodeOptions(short_side=48))
    assert e.value.path == str(bad)


def _test_dataset(root, sampling, cache, backend="pyav"):
    samples = read_annotations(f"{root}/val.csv", root)
    clip = ClipConfig(num_frames=8, sampling_rate=4, sampling=sampling, input_size=32, short_side_size=32)
    return VideoClipDataset(samples, "test", clip, test_num_segment=3, test_num_crop=2, video_backend=backend,
                            test_segment_cache=cache)


@pytest.mark.parametrize("sampling", ["dense", "segment"])
def test_test_segments_from_one_decode(tmp_path, monkeypatch, sampling):
    root = str(tmp_path)
    make_dataset(root, num_train=1, num_val=3, num_test=1, frames=70, height=48, width=64, seed=0)
    alone = _test_dataset(root, sampling, cache=False)
    expected = [alone[i] for i in range(len(alone))]
    opened = []
    read_video = video_dataset.read_video
    monkeypatch.setattr(video_dataset, "read_video", lambda path, *a: opened.append(path) or read_video(path, *a))
    cached = _test_dataset(root, sampling, cache=True)
    for item in range(len(cached)):
        out = cached[item]
        assert torch.equal(out["video"], expected[item]["video"]), item
        assert out["video"].shape == (2, 3, 8, 32, 32)  # both crops of the segment
        assert torch.equal(out["segment"], expected[item]["segment"])
    assert len(opened) == 3  # one decode per video for its three segments
    assert cached._segments is None  # dropped after each video's last segment
    assert torch.equal(cached[4]["video"], expected[4]["video"])  # out of order: decoded again, same frames
    assert torch.equal(cached[3]["video"], expected[3]["video"])


def test_test_segments_through_a_dataloader_worker(tmp_path):
    root = str(tmp_path)
    make_dataset(root, num_train=1, num_val=3, num_test=1, frames=70, height=48, width=64, seed=0)

    def load(cache, workers):
        dataset = _test_dataset(root, "dense", cache)
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate_clips)
        return [batch["video"] for batch in loader]

    ours, reference = load(True, 2), load(False, 0)
    assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, reference))


def test_transcode_recipe_for_cheap_decoding(tmp_path):
    settings = EncodeSettings("ffmpeg", "scale=w=iw:h=ih", gop=16, fastdecode=True, b_pyramid=False)
    command = settings.command("in.mp4", "out.mp4")
    assert command[command.index("-tune") + 1] == "fastdecode"
    assert command[command.index("-b-pyramid") + 1] == "none"
    assert "-tune" not in EncodeSettings("ffmpeg", "scale=w=iw:h=ih").command("in.mp4", "out.mp4")
    src = tmp_path / "src"
    src.mkdir()
    write_video(str(src / "v.mp4"), _moving_bar(), fps=25, codec="h264")
    decoded = {}
    for name, recipe in {"plain": {}, "cheap": {"fastdecode": True, "b_pyramid": False}}.items():
        report = transcode_tree(str(src), str(tmp_path / name), gop=16, workers=1, ffmpeg=find_ffmpeg(), **recipe)
        assert report.done and not report.failed
        path = str(tmp_path / name / "v.mp4")
        frames, decoded[name] = _frames(path, list(range(40, 104, 4)))
        assert torch.equal(frames, _frames(path, list(range(40, 104, 4)), backend="decord")[0])
        assert _bar_positions(frames) == [i % 64 for i in range(40, 104, 4)]
    assert decoded["cheap"] < decoded["plain"]  # no B-frame references: more frames skipped


def _bench():
    path = os.path.join(ROOT, "bench", "bench_dataloader.py")
    spec = importlib.util.spec_from_file_location("bench_dataloader", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("mode,extra", [("pretrain", []),
                                        ("test", ["--test_num_segment", "2", "--test_num_crop", "2"])])
def test_bench_times_the_variants_side_by_side(tmp_path, capsys, mode, extra):
    root = str(tmp_path)
    make_dataset(root, num_train=2, num_val=1, num_test=1, frames=60, height=48, width=64, seed=0)
    bench = _bench()
    variants = ["official", "no_levers", "levers", "convert_every_frame", "decoder_scale", "no_segment_cache",
                "decord_decoder_scale"]
    threads = torch.get_num_threads()
    try:
        bench.main(bench.get_args(["--csv", f"{root}/train.csv", "--data_path", root, "--mode", mode,
                                   "--num_frames", "8", "--input_size", "32", "--num_items", "4", "--clock", "cpu",
                                   "--decode_short_side", "32", "--variants", *variants, *extra]))
    finally:
        torch.set_num_threads(threads)  # the benchmark sets one thread
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in records] == variants
    assert [r["backend"] for r in records] == ["decord"] + ["pyav"] * 5 + ["decord"]
    for r in records:
        assert r["decode_ms"] > 0 and r["clips_per_s_per_core"] > 0 and r["speedup_vs_official"] > 0
        assert r["decode_only_clips_per_s_per_core"] > r["clips_per_s_per_core"] * (r["augment_ms"] > 0)
    if mode == "pretrain":
        by_name = {r["variant"]: r for r in records}
        assert by_name["levers"]["frames_decoded_per_clip"] < by_name["no_levers"]["frames_decoded_per_clip"]
        assert by_name["official"]["speedup_vs_official"] == 1.0
    else:
        assert all(r["test_views"] == "2x2" and r["open_ms"] == 0 for r in records)
    with pytest.raises(SystemExit):
        bench.get_args(["--csv", "x.csv", "--variants", "decoder_scale"])  # needs --decode_short_side
    with pytest.raises(SystemExit):
        bench.get_args(["--csv", "x.csv", "--variants", "torchcodec_decoder_scale"])
