"""extract_features.py: window bookkeeping, streamed and batched features, VideoMAEv2's presets,
resume after a kill, sharding over two ranks, unreadable videos.

Videos come from Debian's ffmpeg (testsrc2, H.264 with B-frames), not from our own writer.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import extract_features as X
from datasets.decoding import VideoError, open_video
from datasets.frame_stream import iter_frames
from feature_windows import plan_windows, stream_clips
from helpers import backend_params
from modeling_finetune import vit_tiny_patch16_224

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


def make_video(path: str, frames: int, rate: str = "25", size: str = "96x72") -> str:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
                    "-frames:v", str(frames), "-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p", path], check=True)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A ViT-Ti checkpoint with a classifier (the extractor drops it)."""
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("weights") / "tiny.pth")
    torch.save({"model": vit_tiny_patch16_224(num_classes=7).state_dict()}, path)
    return path


def reference_starts(length: int, span: int, stride: int, tail: str):
    """Window starts read off the definition: every stride; full while the window fits; with "pad"
    the first window that does not fit too, when it starts inside the video and frames after the
    last full window (or any frames, without one) are otherwise uncovered."""
    starts, k = [], 0
    while k * stride < length:
        s = k * stride
        if s + span <= length:
            starts.append(s)
        else:
            covered = starts[-1] + span if starts else 0
            if tail == "pad" and covered < length:
                starts.append(s)
            break
        k += 1
    return starts


@pytest.mark.parametrize("length", [1, 5, 15, 16, 17, 19, 20, 21, 63, 64, 65, 1001])
@pytest.mark.parametrize("window,rate,stride", [(16, 1, 4), (16, 1, 16), (8, 2, 4), (4, 4, 20), (2, 1, 1)])
@pytest.mark.parametrize("tail", ["pad", "drop"])
def test_window_counts_and_times(length, window, rate, stride, tail):
    fps = Fraction(30000, 1001)
    plan = plan_windows(length, fps, window=window, sampling_rate=rate, stride=stride, tail=tail)
    span = (window - 1) * rate + 1
    starts = reference_starts(length, span, stride, tail)
    assert plan.start_frame.tolist() == starts
    if (window, rate, tail) == (16, 1, "drop"):  # VideoMAEv2's range(0, n - 15, stride)
        assert starts == list(range(0, length - 15, stride))
    for s, row in zip(starts, plan.frames.tolist()):
        assert row == [min(s + k * rate, length - 1) for k in range(window)]
    assert np.allclose(plan.start_time, [s * 1001 / 30000 for s in starts])
    assert np.allclose(plan.centre_time, [(s + span / 2) * 1001 / 30000 for s in starts])
    if tail == "pad" and stride <= span:  # every frame lies in the time some window covers
        assert set(range(length)) <= {f for s in starts for f in range(s, s + span)}
    assert plan.padded == (tail == "pad" and bool(starts) and starts[-1] + span > length)


@pytest.mark.parametrize("length,fps,target", [
    (100, Fraction(25), Fraction(10)), (37, Fraction(30000, 1001), Fraction(8)),
    (10, Fraction(24), Fraction(60)), (3, Fraction(30), Fraction(1))])
def test_resampled_windows_take_the_frame_shown_at_each_time(length, fps, target):
    plan = plan_windows(length, fps, window=4, sampling_rate=2, stride=3, tail="pad", target_fps=target)
    shown = [i for i in range(10 * length * 10) if Fraction(i) / target < Fraction(length) / fps]
    assert plan.timeline_frames == len(shown)  # every time before the video's end
    for s, row in zip(plan.start_frame.tolist(), plan.frames.tolist()):
        for k, source in enumerate(row):
            j = min(s + 2 * k, plan.timeline_frames - 1)
            t = Fraction(j) / target  # the frame shown at t: the last one starting at or before t
            assert source == max(i for i in range(length) if Fraction(i) / fps <= t)
    assert np.allclose(plan.start_time, plan.start_frame / float(target))


def test_resampling_needs_a_frame_rate():
    with pytest.raises(ValueError, match="frame rate is unknown"):
        plan_windows(10, None, window=4, sampling_rate=1, stride=1, target_fps=Fraction(5))


@pytest.mark.parametrize("length,window,rate,stride,target,batch", [
    (1000, 16, 1, 4, None, 8), (333, 8, 2, 16, None, 3), (97, 4, 1, 1, Fraction(7), 5), (5, 16, 1, 4, None, 4)])
def test_stream_clips_reads_ahead_a_bounded_number_of_frames(length, window, rate, stride, target, batch):
    """Every clip holds its own frames (frame i painted with value i), and no batch is emitted later
    than a chunk after its last frame arrived: the video is streamed, not read first."""
    plan = plan_windows(length, Fraction(25), window=window, sampling_rate=rate, stride=stride, target_fps=target)
    consumed, needed = [], np.unique(plan.frames)

    def frames():
        for i in range(length):
            consumed.append(i)
            yield i, np.full((2, 2, 3), i % 251, dtype=np.uint8)

    seen = 0
    for first, clips in stream_clips(frames(), plan, batch, lambda x: x.permute(0, 3, 1, 2).float(), chunk=16):
        assert first == seen and clips.shape[1:3] == (3, window)
        rows = plan.frames[first:first + clips.shape[0]]
        assert torch.equal(clips[:, 0, :, 0, 0], torch.from_numpy(rows % 251).float())
        ahead = np.searchsorted(needed, rows.max()) + 16 + batch * stride * rate  # in frames the plan uses
        assert consumed[-1] <= needed[min(ahead, len(needed) - 1)]
        seen += clips.shape[0]
    assert seen == len(plan)


def one_window_at_a_time(path, plan, model, prepare, kind):
    """Each window read with the random-access reader and run alone."""
    reader, out = open_video(path, "pyav"), []
    for row in plan.frames.tolist():
        clip = prepare(reader.get_frames(row).permute(0, 2, 3, 1)).permute(1, 0, 2, 3)[None]  # [1, 3, T, h, w]
        with torch.no_grad():
            out.append(X.window_features(model, clip, kind))
    return torch.cat(out).numpy()


@needs_ffmpeg
@pytest.mark.parametrize("kind,dtype,extra", [("pooled", "float32", []), ("map", "float16", ["--resize", "short_side",
                                              "--short_side_size", "40", "--fps", "10", "--sampling_rate", "2"])])
def test_batched_streamed_features_equal_one_window_at_a_time(tmp_path, weights, kind, dtype, extra):
    path = make_video(str(tmp_path / "v.mp4"), 53, rate="25")
    args = X.get_args(["--data_path", str(tmp_path), "--finetune", weights, "--model", "vit_tiny_patch16_224",
                       "--num_frames", "4", "--stride", "3", "--input_size", "32", "--batch_size", "5",
                       "--features", kind, "--dtype", dtype, "--device", "cpu", *extra])
    model = X.load_backbone(args, torch.device("cpu"))
    prepare = X.frame_preparer(args.resize, args.input_size, args.short_side_size, args.normalize, torch.device("cpu"))
    features, plan, facts = X.extract_video(path, model, args, prepare, torch.device("cpu"), "fp32")
    assert facts["frames"] == 53 and len(plan) > 5 and features.dtype == np.dtype(dtype)
    expected = one_window_at_a_time(path, plan, model, prepare, kind)
    assert features.shape == expected.shape == ((len(plan), 192) if kind == "pooled" else (len(plan), 192, 2, 2))
    np.testing.assert_allclose(features, expected.astype(dtype), rtol=1e-3 if dtype == "float16" else 1e-5,
                               atol=1e-3 if dtype == "float16" else 1e-5)


def videomae_v2_reading(path: str, stride: int):
    """VideoMAEv2's extract_tad_feature.py as its code reads, written out here: decord
    VideoReader(num_threads=1), starts range(0, len - 15, stride), get_batch of 16 consecutive
    frames, [T, H, W, 3] -> [3, T, H, W] float / 255, F.interpolate to (224, 224) bilinear,
    align_corners=False, on the 4-d tensor (the frames are its channels)."""
    import decord

    vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    for start in range(0, len(vr) - 15, stride):
        data = torch.from_numpy(vr.get_batch(np.arange(start, start + 16)).asnumpy())
        video = data.permute(3, 0, 1, 2).to(torch.float32) / 255
        yield start, F.interpolate(video, size=(224, 224), mode="bilinear", align_corners=False)


@pytest.mark.slow
@needs_ffmpeg
@pytest.mark.parametrize("preset,stride", [("thumos14", 4), ("fineaction", 16)])
def test_presets_equal_videomae_v2_extractor(tmp_path, weights, preset, stride):
    pytest.importorskip("decord")
    path = make_video(str(tmp_path / "v.mp4"), 35, rate="30000/1001", size="176x100")
    args = X.get_args(["--data_path", str(tmp_path), "--finetune", weights, "--model", "vit_tiny_patch16_224",
                       "--preset", preset, "--device", "cpu"])
    assert (args.num_frames, args.sampling_rate, args.stride, args.tail, args.input_size, args.normalize,
            args.precision) == (16, 1, stride, "drop", 224, "none", "fp32")
    info = X.probe(path)
    plan = plan_windows(info.num_frames, info.fps, window=16, sampling_rate=1, stride=stride, tail="drop")
    prepare = X.frame_preparer("full", 224, 224, "none", torch.device("cpu"))
    ours = {plan.start_frame[first + b]: clip for first, clips in
            stream_clips(iter_frames(path, plan.needed().__contains__, int(plan.frames.max())), plan, 3, prepare)
            for b, clip in enumerate(clips)}
    theirs = dict(videomae_v2_reading(path, stride))
    assert sorted(ours) == sorted(theirs) == list(range(0, 35 - 15, stride))
    for start, clip in theirs.items():
        assert (ours[start] - clip).abs().max() <= 1e-6, start
    if preset != "thumos14":
        return  # the features: once, on THUMOS14's windows
    model = X.load_backbone(args, torch.device("cpu"))
    features, _, _ = X.extract_video(path, model, args, prepare, torch.device("cpu"), args.precision)
    with torch.no_grad():  # their model.forward_features, one window per forward
        expected = torch.cat([model.forward_features(clip[None]) for clip in theirs.values()])
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-4, rtol=0)


SMALL = ["--model", "vit_tiny_patch16_224", "--num_frames", "4", "--stride", "2", "--input_size", "32",
         "--batch_size", "1", "--device", "cpu"]


def run_extractor(out, data, weights, *extra, env=None):
    """extract_features.py in its own process (started, not waited for)."""
    cmd = [sys.executable, os.path.join(ROOT, "extract_features.py"), "--data_path", str(data), "--finetune", weights,
           *SMALL, "--output_dir", str(out), *extra]
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process) -> str:
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i, frames in enumerate([9, 30, 41, 3, 60, 25, 50, 33, 44, 38]):
        make_video(str(folder / f"clip{i:02d}.mp4"), frames, rate=["25", "30", "24"][i % 3])
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    return folder


def finished_records(out):
    folder = out / "records"
    return [n[:-5] for n in os.listdir(folder) if not n.startswith(".")] if folder.exists() else []


def outputs(out):
    return {n[:-4]: np.load(os.path.join(out, n)) for n in os.listdir(out) if n.endswith(".npy")}


@pytest.mark.e2e
@needs_ffmpeg
def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, weights, video_folder):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    common = ["--data_path", str(video_folder), "--finetune", weights, *SMALL]
    X.main(X.get_args([*common, "--output_dir", str(whole)]))
    index = json.load(open(whole / "index.json"))
    assert len(index["videos"]) == 10 and [f["video"] for f in index["failures"]] == ["broken"]
    assert "broken.mp4" in index["failures"][0]["path"] and index["failures"][0]["reason"]
    assert open(whole / "failures_rank0.tsv").read().startswith("broken\t")

    process = run_extractor(killed, video_folder, weights)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(finished_records(killed)) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done_before = {video: os.path.getmtime(killed / f"{video}.npy") for video in finished_records(killed)}
    assert 2 <= len(done_before) < 10, "the kill came too late to test a resume"
    log = finish(run_extractor(killed, video_folder, weights, "--resume"))
    assert f"{len(done_before)} already extracted" in log
    for video, mtime in done_before.items():  # finished videos were not extracted again
        assert os.path.getmtime(killed / f"{video}.npy") == mtime
    assert not [n for n in os.listdir(killed) + os.listdir(killed / "records") if ".tmp-" in n]
    a, b = outputs(whole), outputs(killed)
    assert sorted(a) == sorted(b) and len(a) == 10
    for video in a:
        np.testing.assert_array_equal(a[video], b[video])
    resumed = {v["video"]: v for v in json.load(open(killed / "index.json"))["videos"]}
    for v in index["videos"]:
        assert resumed[v["video"]]["start_time"] == v["start_time"] and resumed[v["video"]]["windows"] == v["windows"]
    with pytest.raises(SystemExit, match="extracted with other settings .*stride: 2 there, 3 now"):
        X.main(X.get_args([*common, "--output_dir", str(killed), "--resume", "--stride", "3"]))


@pytest.mark.e2e
@needs_ffmpeg
def test_two_ranks_cover_every_video_once(tmp_path, weights, video_folder):
    out = tmp_path / "out"
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    ranks = [run_extractor(out, video_folder, weights, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    for process in ranks:
        finish(process)
    records = [json.load(open(out / "records" / n)) for n in os.listdir(out / "records")]
    by_rank = {r: sorted(x["video"] for x in records if x["rank"] == r) for r in range(2)}
    assert by_rank[0] and by_rank[1] and not set(by_rank[0]) & set(by_rank[1])
    assert sorted(by_rank[0] + by_rank[1]) == [f"clip{i:02d}" for i in range(10)]
    failed = [open(out / f"failures_rank{r}.tsv").read() for r in range(2) if (out / f"failures_rank{r}.tsv").exists()]
    assert len(failed) == 1 and failed[0].startswith("broken\t")


def test_shards_are_disjoint_and_complete(tmp_path):
    videos = []
    for i in range(23):
        path = tmp_path / f"v{i}.mp4"
        path.write_bytes(b"x" * (i * 37 % 11 + 1))
        videos.append((f"v{i}", str(path)))
    for world in (1, 2, 3, 8, 30):
        shards = [X.shard(list(reversed(videos)), r, world) for r in range(world)]
        assert sorted(v for s in shards for v in s) == sorted(videos)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@needs_ffmpeg
def test_short_or_broken_videos_are_named(tmp_path, weights):
    make_video(str(tmp_path / "short.mp4"), 5)
    args = X.get_args(["--data_path", str(tmp_path), "--finetune", weights, "--model", "vit_tiny_patch16_224",
                       "--preset", "thumos14", "--device", "cpu"])
    prepare = X.frame_preparer("full", 224, 224, "none", torch.device("cpu"))
    with pytest.raises(VideoError, match=r"short\.mp4: 5 frames, shorter than one window \(16\)"):
        X.extract_video(str(tmp_path / "short.mp4"), None, args, prepare, torch.device("cpu"), "fp32")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "list.csv").write_text("a/x.mp4 0\nb/x.mp4 1\n")
    with pytest.raises(SystemExit, match="two videos would write x.npy"):
        X.list_videos(str(tmp_path / "list.csv"))


def test_a_signal_stops_before_the_next_video_with_the_requeue_code(tmp_path):
    args = X.get_args(["--data_path", str(tmp_path), "--finetune", "w.pth", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stopped:
        X.extract_all([("v", str(tmp_path / "v.mp4"))], None, args, None, torch.device("cpu"), "fp32", {}, 0, [15])
    assert stopped.value.code == 75 and not os.listdir(tmp_path)


@pytest.mark.parametrize("preset,stride", [("thumos14", 4), ("fineaction", 16), ("none", 4)])
def test_launcher_command_parses(preset, stride):
    env = {"PATH": os.environ["PATH"], "VIDEO_DIR": "/data/thumos14", "PRETRAINED": "/runs/ft/checkpoint-best.pth",
           "OUTPUT_ROOT": "/runs", "NPROC_PER_NODE": "8", "SIGMA_DRY_RUN": "1", "PRESET": preset}
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "extract", "extract_features.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    argv = words[words.index(os.path.join(ROOT, "extract_features.py")) + 1:]
    args = X.get_args(argv)
    assert (args.data_path, args.finetune, args.resume, args.stride) == ("/data/thumos14", env["PRETRAINED"], True,
                                                                         stride)
    assert args.normalize == ("imagenet" if preset == "none" else "none")
    assert args.output_dir == f"/runs/features_{preset}/ft-checkpoint-best"


@needs_ffmpeg
@pytest.mark.parametrize("backend", backend_params(leave_out=("pyav",)))  # against pyav
def test_every_backend_streams_the_same_frames(tmp_path, backend):
    """The sequential PyAV stream, and decord / torchcodec read in consecutive chunks, give the frames
    the random-access PyAV reader gives, the stream's end included."""
    path = make_video(str(tmp_path / "v.mp4"), 75, rate="30")
    wanted = {0, 1, 2, 9, 10, 33, 34, 35, 36, 37, 70, 74}.__contains__
    reference = open_video(path, "pyav").get_frames(sorted(i for i in range(75) if wanted(i))).permute(0, 2, 3, 1)
    for name in ("pyav", backend):
        got = list(iter_frames(path, wanted, 74, name))
        assert [i for i, _ in got] == sorted(i for i in range(75) if wanted(i))
        assert np.array_equal(np.stack([f for _, f in got]), reference.numpy()), name
    with pytest.raises(VideoError, match="before frame 80"):
        list(iter_frames(path, wanted, 80, "pyav"))
