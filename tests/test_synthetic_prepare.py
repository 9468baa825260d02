"""The synthetic dataset (real encoded files, published CSV formats) and the preparation CLI."""
import json
import logging
import os
import subprocess
import sys
from collections import Counter

import av
import numpy as np
import pytest

from datasets import prepare, transcode
from datasets.annotations import read_annotations
from datasets.prepare import main
from datasets.synthetic import CODECS, class_names, make_dataset, render_clip, write_broken_files, write_video
from datasets.transcode import PrepareError, transcode_tree

SMALL = dict(frames=16, height=64, width=80)


def _decode(path: str) -> np.ndarray:
    """All frames of a video, uint8 [T, H, W, 3]."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _rows(path: str) -> list:
    with open(path) as f:
        return [tuple(line.rsplit(" ", 1)) for line in f.read().splitlines()]


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _touch_videos(root, rel_paths) -> None:
    # CSV generation only checks that videos exist: empty files stand in for them.
    for rel in rel_paths:
        _write(os.path.join(root, rel), "")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    return make_dataset(root, num_train=8, num_val=4, num_test=5, seed=0, **SMALL)


# --------------------------------------------------------------------------------- synthetic

def test_synthetic_videos_decode_and_labels_are_balanced(demo):
    root, names = demo["root"], demo["classes"]
    assert names == class_names(4)
    for split, count in (("train", 8), ("val", 4), ("test", 5)):
        rows = _rows(demo[split])
        assert len(rows) == count
        labels = [int(label) for _, label in rows]
        assert set(labels) <= set(range(4))
        per_class = Counter(labels)
        assert len(per_class) == min(4, count) and max(per_class.values()) - min(per_class.values()) <= 1
        for rel, label in rows:
            assert not os.path.isabs(rel) and rel.split("/")[1] == names[int(label)]
            assert _decode(os.path.join(root, rel)).shape == (16, 64, 80, 3)
    assert _rows(demo["pretrain"]) == [(rel, "0") for rel, _ in _rows(demo["train"])]
    with open(demo["classes_file"]) as f:
        assert f.read().split() == names
    # The project's own reader accepts the files.
    assert len(read_annotations(demo["train"], root, nb_classes=4)) == 8


@pytest.mark.parametrize("num_classes", [4, 8])
def test_object_moves_in_the_labelled_direction(num_classes):
    directions = {"left_to_right": (1, 0), "right_to_left": (-1, 0), "top_to_bottom": (0, 1), "bottom_to_top": (0, -1)}
    shift = {}
    for label, name in enumerate(class_names(num_classes)):
        for seed in range(6):
            _, centres = render_clip(np.random.default_rng(seed), label, num_classes, **SMALL)
            move = centres[-1] - centres[0]  # (dx, dy)
            expected = directions[name.rsplit("_", 1)[0] if num_classes == 8 else name]
            assert np.allclose(np.sign(np.round(move, 6)), expected), (name, seed, move)
            shift.setdefault(name.rsplit("_", 1)[-1], []).append(np.abs(move).max() / (80 if move[0] else 64))
    if num_classes == 8:  # speed classes: every fast crossing covers more of the frame than any slow one
        assert min(shift["fast"]) > max(shift["slow"])


def test_appearance_does_not_depend_on_the_label():
    # The same generator state gives the same look whatever the class: only the motion differs.
    a, _ = render_clip(np.random.default_rng(7), 0, 4, **SMALL)
    b, _ = render_clip(np.random.default_rng(7), 1, 4, **SMALL)
    assert not np.array_equal(a, b)
    colours_a, colours_b = ({tuple(c) for c in v.reshape(-1, 3)[::7]} for v in (a, b))
    assert len(colours_a & colours_b) > 0.5 * len(colours_a)


def test_same_seed_same_dataset(tmp_path):
    runs = [make_dataset(str(tmp_path / name), num_train=2, num_val=1, num_test=1, seed=seed, **SMALL)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = runs
    for key in ("train", "val", "test", "pretrain"):
        with open(a[key], "rb") as fa, open(b[key], "rb") as fb:
            assert fa.read() == fb.read()
    for rel, _ in _rows(a["train"]) + _rows(a["val"]):
        frames = _decode(os.path.join(a["root"], rel))
        np.testing.assert_array_equal(frames, _decode(os.path.join(b["root"], rel)))
        assert not np.array_equal(frames, _decode(os.path.join(c["root"], rel)))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_writes_a_readable_file(tmp_path, codec):
    video, _ = render_clip(np.random.default_rng(0), 2, **SMALL)
    path = str(tmp_path / f"clip{CODECS[codec][1]}")
    write_video(path, video, fps=25, codec=codec)
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.name == codec  # the codec names are FFmpeg's
    decoded = _decode(path)
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(int) - video).mean() < 20  # lossy, but the same picture


def test_dataset_in_other_containers(tmp_path):
    result = make_dataset(str(tmp_path), num_train=2, num_val=1, num_test=1, codec="vp9", **SMALL)
    rows = _rows(result["train"])
    assert all(rel.endswith(".webm") for rel, _ in rows)
    assert _decode(os.path.join(str(tmp_path), rows[0][0])).shape == (16, 64, 80, 3)


def test_write_video_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(str(tmp_path / "odd.mp4"), np.zeros((4, 63, 80, 3), np.uint8))


def test_broken_files_are_what_they_claim(tmp_path):
    broken = write_broken_files(str(tmp_path))
    assert sorted(broken) == ["empty", "garbage", "missing", "too_short", "truncated"]
    path = {kind: os.path.join(str(tmp_path), rel) for kind, rel in broken.items()}
    assert not os.path.exists(path["missing"])
    assert os.path.getsize(path["empty"]) == 0
    with open(path["truncated"], "rb") as f:
        assert f.read(8)[4:] == b"ftyp"  # the start of a real mp4 ...
    with pytest.raises(av.error.FFmpegError):  # ... that cannot be decoded
        _decode(path["truncated"])
    with pytest.raises(av.error.FFmpegError):
        _decode(path["garbage"])
    assert os.path.getsize(path["garbage"]) > 0
    assert _decode(path["too_short"]).shape[0] == 3


# --------------------------------------------------------------------------------- transcode

@pytest.fixture
def source_tree(tmp_path):
    """Three decodable videos in three containers, one of them portrait, and one garbage file."""
    src = tmp_path / "src"

    def clip(height: int, width: int) -> np.ndarray:
        return render_clip(np.random.default_rng(1), 0, 4, frames=12, height=height, width=width)[0]

    os.makedirs(src / "a" / "deep")
    os.makedirs(src / "b")
    write_video(str(src / "a" / "deep" / "land.mp4"), clip(64, 80), codec="h264")
    write_video(str(src / "b" / "portrait.webm"), clip(100, 62), codec="vp9")
    write_video(str(src / "wide.avi"), clip(64, 86), codec="mpeg4")
    _write(src / "b" / "garbage.mp4", "definitely not a video")
    _write(src / "notes.txt", "not a video name: ignored")
    return src


def _sizes(dst) -> dict:
    out = {}
    for dirpath, _, names in os.walk(dst):
        for name in names:
            if name == transcode.MANIFEST:
                continue
            with av.open(os.path.join(dirpath, name)) as c:
                stream = c.streams.video[0]
                out[os.path.relpath(os.path.join(dirpath, name), dst)] = (stream.width, stream.height)
    return out


def test_transcode_short_side_resume_and_failures(source_tree, tmp_path, caplog):
    dst = tmp_path / "dst"
    with caplog.at_level(logging.WARNING):
        rc = main(["transcode", "--src", str(source_tree), "--dst", str(dst), "--short_side", "50",
                   "--gop", "4", "--workers", "2"])
    assert rc == 1  # the garbage file failed, the others went through
    garbage = str(source_tree / "b" / "garbage.mp4")
    assert any(garbage in r.getMessage() and "Invalid data" in r.getMessage() for r in caplog.records)
    sizes = _sizes(dst)  # also proves no partial or garbage output was left behind
    assert sorted(sizes) == ["a/deep/land.mp4", "b/portrait.mp4", "wide.mp4"]
    for w, h in sizes.values():
        assert min(w, h) == 50 and w % 2 == 0 and h % 2 == 0
    assert sizes["b/portrait.mp4"][0] == 50 and abs(sizes["wide.mp4"][0] - 50 * 86 / 64) <= 2
    with av.open(str(dst / "wide.mp4")) as c:
        keyframes = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    assert keyframes == [0, 4, 8]

    mtimes = {rel: os.stat(dst / rel).st_mtime_ns for rel in sizes}
    report = transcode_tree(str(source_tree), str(dst), short_side=50, workers=2)
    assert report.done == [] and len(report.skipped) == 3 and [s for s, _ in report.failed] == [garbage]
    assert {rel: os.stat(dst / rel).st_mtime_ns for rel in sizes} == mtimes

    # A killed run of an earlier version leaves NAME.partial: removed, never taken for a finished output.
    os.remove(dst / "wide.mp4")
    _write(dst / "wide.mp4.partial", "half a file")
    report = transcode_tree(str(source_tree), str(dst), short_side=50, workers=1)
    assert report.done == [str(source_tree / "wide.avi")]
    assert not os.path.exists(dst / "wide.mp4.partial") and _decode(str(dst / "wide.mp4")).shape[0] == 12


@pytest.mark.parametrize("size, expected", [
    ({"height": 35}, {(42, 34), (44, 34)}),  # odd requests round down to even
    ({"short_side": 45}, {(54, 44), (56, 44)}),
    ({"height": 400}, {(80, 64)}),  # never upscaled
    ({"short_side": 400}, {(80, 64)}),
])
def test_transcode_sizes_are_even_and_never_upscaled(tmp_path, size, expected):
    """`expected` (width, height) for a 80x64 landscape clip; a 64x80 portrait one is its transpose."""
    src = tmp_path / "src"
    os.makedirs(src)
    write_video(str(src / "land.mp4"), render_clip(np.random.default_rng(0), 0, frames=8, height=64, width=80)[0])
    write_video(str(src / "port.mp4"), render_clip(np.random.default_rng(0), 0, frames=8, height=80, width=64)[0])
    report = transcode_tree(str(src), str(tmp_path / "dst"), **size)
    assert not report.failed
    sizes = _sizes(tmp_path / "dst")
    assert sizes["land.mp4"] in expected, sizes
    if "short_side" in size:
        assert sizes["port.mp4"][::-1] in expected, sizes
    else:
        assert sizes["port.mp4"][1] == min(80, size["height"] // 2 * 2) and sizes["port.mp4"][0] % 2 == 0


def test_transcode_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(transcode.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    with pytest.raises(PrepareError, match="no ffmpeg"):
        transcode.find_ffmpeg()
    os.makedirs(tmp_path / "src")
    assert main(["transcode", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst")]) == 2


# --------------------------------------------------------------------------------- CSVs

def _problems(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_csv_from_folders_with_split_dirs_matches_the_synthetic_lists(demo, tmp_path):
    ann = prepare.csv_from_folders(demo["root"], split_dirs=["train", "val", "test"])
    assert ann.classes == sorted(demo["classes"]) and not ann.problems
    for split in ("train", "val", "test"):
        expected = {(rel, demo["classes"][int(label)]) for rel, label in _rows(demo[split])}
        assert {(rel, ann.classes[label]) for rel, label in ann.splits[split]} == expected


def test_csv_from_folders_val_fraction(tmp_path, caplog):
    root = tmp_path / "videos"
    _touch_videos(root, [f"{c}/{c}_{i}.mp4" for c in ("b_jump", "a run", "c_swim") for i in range(10)])
    _write(root / "a run" / "readme.txt", "ignored")
    os.makedirs(root / "d_empty")
    out = tmp_path / "ann"
    with caplog.at_level(logging.WARNING):
        rc = main(["csv-from-folders", "--root", str(root), "--out_dir", str(out), "--val_fraction", "0.2"])
    assert rc == 1 and any("d_empty" in m and "without videos" in m for m in _problems(caplog))
    with open(out / "classes.txt") as f:
        assert f.read().splitlines() == ["a run", "b_jump", "c_swim", "d_empty"]
    train, val = _rows(out / "train.csv"), _rows(out / "val.csv")
    assert Counter(label for _, label in val) == {"0": 2, "1": 2, "2": 2}
    assert len(train) == 24 and not {r for r, _ in train} & {r for r, _ in val}
    assert all(rel.startswith(("a run/", "b_jump/", "c_swim/")[int(label)]) for rel, label in train + val)
    # Paths with spaces survive the project's reader.
    assert {s.path for s in read_annotations(str(out / "val.csv"), str(root))} == {str(root / r) for r, _ in val}
    again = prepare.csv_from_folders(str(root), val_fraction=0.2, seed=0)
    other = prepare.csv_from_folders(str(root), val_fraction=0.2, seed=1)
    assert [(r, str(lbl)) for r, lbl in again.splits["val"]] == val and other.splits["val"] != again.splits["val"]


def test_csv_from_folders_keeps_a_val_video_of_every_class_with_two_and_warns_about_the_rest(tmp_path, caplog):
    root = tmp_path / "videos"
    sizes = {"one": 1, "two": 2, "three": 3, "twelve": 12}
    _touch_videos(root, [f"{c}/{i}.mp4" for c, n in sizes.items() for i in range(n)])
    out = tmp_path / "ann"
    with caplog.at_level(logging.WARNING):
        rc = main(["csv-from-folders", "--root", str(root), "--out_dir", str(out), "--val_fraction", "0.1"])
    assert rc == 0  # nothing left out
    classes = (out / "classes.txt").read_text().splitlines()
    val = Counter(classes[int(label)] for _, label in _rows(out / "val.csv"))
    train = Counter(classes[int(label)] for _, label in _rows(out / "train.csv"))
    assert val == {"two": 1, "three": 1, "twelve": 1}  # round(0.1 x n) would give 0, 0, 0, 1
    assert train == {"one": 1, "two": 1, "three": 2, "twelve": 11}
    assert [m for m in _problems(caplog) if "val split" in m] == [
        "val split: no video of 1 class (one video each, kept for train): 'one'"]
    # Asking for no val at all is not warned about.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert prepare.csv_from_folders(str(root), val_fraction=0).splits["val"] == []
    assert not _problems(caplog)


def test_csv_from_folders_with_split_dirs_warns_about_a_class_missing_from_a_split(tmp_path, caplog):
    root = tmp_path / "videos"
    _touch_videos(root, ["train/a/1.mp4", "train/b/2.mp4", "val/a/3.mp4"])
    with caplog.at_level(logging.WARNING):
        ann = prepare.csv_from_folders(str(root), split_dirs=["train", "val"])
    assert ann.splits["val"] == [("val/a/3.mp4", 0)]
    assert any(m.startswith("val split: no video of 1 class in ") and m.endswith("'b'") for m in _problems(caplog))


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_written_csvs_follow_the_umask(tmp_path, umask):
    """Lists are shared on a cluster: a group-writable umask gives group-writable CSVs, a strict one none."""
    root = tmp_path / "videos"
    _touch_videos(root, [f"{c}/{i}.mp4" for c in "ab" for i in range(3)])
    old = os.umask(umask)
    try:
        assert main(["csv-from-folders", "--root", str(root), "--out_dir", str(tmp_path / "ann")]) == 0
        make_dataset(str(tmp_path / "demo"), num_train=1, num_val=1, num_test=1, frames=4, height=32, width=32)
    finally:
        os.umask(old)
    written = [tmp_path / "ann" / n for n in ("train.csv", "val.csv", "classes.txt")]
    written += [tmp_path / "demo" / n for n in ("train.csv", "pretrain.csv", "classes.txt")]
    for path in written:
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path


def test_csv_from_folders_ext_chooses_the_files(tmp_path):
    root = tmp_path / "videos"
    _touch_videos(root, ["a/1.mp4", "a/2.WEBM", "a/3.avi", "b/4.mp4", "b/5.mkv"])
    _write(root / "b" / "notes.txt", "not a video")
    out = tmp_path / "ann"
    assert main(["csv-from-folders", "--root", str(root), "--out_dir", str(out), "--val_fraction", "0",
                 "--ext", ".mp4", "webm"]) == 0
    assert sorted(r for r, _ in _rows(out / "train.csv")) == ["a/1.mp4", "a/2.WEBM", "b/4.mp4"]
    everything = prepare.csv_from_folders(str(root), val_fraction=0)  # default: every video extension
    assert sorted(r for r, _ in everything.splits["train"]) == ["a/1.mp4", "a/2.WEBM", "a/3.avi", "b/4.mp4", "b/5.mkv"]
    assert [r for r, _ in prepare.csv_from_folders(str(root), val_fraction=0, exts=[".TXT"]).splits["train"]] == [
        "b/notes.txt"]
    with pytest.raises(prepare.PrepareError, match="--ext"):
        prepare.csv_from_folders(str(root), exts=["."])


SSV2_LABELS = """{
 "Holding something next to something": "0",
 "Pushing something from left to right": "1",
 "Pushing something from right to left": "2"
}
"""
# Laid out like the official files: one key per line, so entries start on known lines (1-based).
SSV2_TRAIN = """[
{
"id": "78687",
"label": "holding potato next to vicks vaporub bottle",
"template": "Holding [something] next to [something]",
"placeholders": ["potato", "vicks vaporub bottle"]
},
{
"id": "42326",
"label": "pushing pen from left to right",
"template": "Pushing [something] from left to right",
"placeholders": ["pen"]
},
{
"id": "100",
"label": "spinning a top",
"template": "Spinning [something]",
"placeholders": ["a top"]
},
{
"id": "200",
"label": "pushing cup from right to left",
"template": "Pushing [something] from right to left",
"placeholders": ["cup"]
}
]
"""
# One entry per line, the other layout in circulation.
SSV2_VAL = """[{"id": "1", "label": "pushing box", "template": "Pushing [something] from right to left"},
{"id": "2", "label": "holding a next to b", "template": "Holding [something] next to [something]"}]
"""


def test_csv_from_ssv2(tmp_path, caplog):
    ann_dir, videos = tmp_path / "ann", tmp_path / "videos"
    files = {name: _write(ann_dir / name, text) for name, text in (
        ("labels.json", SSV2_LABELS), ("train.json", SSV2_TRAIN), ("validation.json", SSV2_VAL),
        ("test.json", '[{"id": "5"},\n{"id": "6"}]'),
        ("test-answers.csv", "5;Pushing something from right to left\n6;Holding something next to something\n"))}
    _touch_videos(videos, ["78687.mp4", "42326.mp4", "100.mp4", "1.mp4", "2.mp4", "5.mp4", "200.webm"])
    out = tmp_path / "out"
    args = ["csv-from-ssv2", "--labels", files["labels.json"], "--train", files["train.json"],
            "--val", files["validation.json"], "--video_dir", str(videos), "--out_dir", str(out)]
    with caplog.at_level(logging.WARNING):
        rc = main(args + ["--test", files["test.json"], "--test_answers", files["test-answers.csv"]])
    assert rc == 1
    assert _rows(out / "train.csv") == [("78687.mp4", "0"), ("42326.mp4", "1")]
    assert _rows(out / "val.csv") == [("1.mp4", "2"), ("2.mp4", "0")]
    assert _rows(out / "test.csv") == [("5.mp4", "2")]
    with open(out / "classes.txt") as f:
        assert f.read().splitlines()[1] == "Pushing something from left to right"
    problems = _problems(caplog)
    assert any(m.startswith(f"{files['train.json']}:14: video 100: unknown label 'Spinning something'")
               for m in problems), problems
    assert any(m.startswith(f"{files['train.json']}:20: video 200: 200.mp4 not found") for m in problems)
    assert any(m.startswith(f"{files['test.json']}:2: video 6: 6.mp4 not found") for m in problems)
    assert len(problems) == 3
    assert main(args + ["--test", files["test.json"]]) == 2  # test labels need the answers file


def test_json_errors_name_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.json", '[\n{"id": "1"},\n{"id": 2,,}\n]')
    with pytest.raises(PrepareError, match=r"bad\.json:3: invalid JSON"):
        prepare._read_json_list(path)
    assert prepare._read_json_list(_write(tmp_path / "ok.json", '[\n{"a": [1,\n2]},\n\n{"b": 3}]')) == [
        (2, {"a": [1, 2]}), (5, {"b": 3})]


def test_csv_from_ucf101(tmp_path, caplog):
    lists, videos = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    _write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    _write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                      "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
                                      "YoYo/v_YoYo_g08_c01.avi 1\r\n"
                                      "Bogus/v_Bogus_g08_c01.avi 4\r\n")
    _write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
                                     "YoYo/v_YoYo_g01_c01.avi\r\n"
                                     "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    _write(lists / "trainlist02.txt", "YoYo/v_YoYo_g08_c01.avi 3\n")
    _write(lists / "testlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\n")
    _touch_videos(videos, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.mp4",
                           "HandstandPushups/v_HandStandPushups_g08_c01.mp4", "YoYo/v_YoYo_g08_c01.mp4",
                           "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.mp4",
                           "HandstandPushups/v_HandStandPushups_g01_c01.mp4"])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc = main(["csv-from-ucf101", "--splits_dir", str(lists), "--video_dir", str(videos), "--out_dir", str(out)])
    assert rc == 1
    assert _rows(out / "train.csv") == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.mp4", "0"),
                                        ("HandstandPushups/v_HandStandPushups_g08_c01.mp4", "1")]
    assert _rows(out / "val.csv") == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.mp4", "0"),
                                      ("HandstandPushups/v_HandStandPushups_g01_c01.mp4", "1")]
    train_list, test_list = str(lists / "trainlist01.txt"), str(lists / "testlist01.txt")
    problems = _problems(caplog)
    assert any(m.startswith(f"{train_list}:3: label 1 disagrees with class 'YoYo'") for m in problems), problems
    assert any(m.startswith(f"{train_list}:4: unknown class 'Bogus'") for m in problems)
    assert any(m.startswith(f"{test_list}:2: YoYo/v_YoYo_g01_c01.mp4 not found") for m in problems)
    assert len(problems) == 3

    ann = prepare.csv_from_ucf101(str(lists), str(videos), split=2)
    assert ann.splits == {"train": [("YoYo/v_YoYo_g08_c01.mp4", 2)],
                          "val": [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.mp4", 0)]} and not ann.problems


def test_csv_from_hmdb51(tmp_path, caplog):
    lists, videos = tmp_path / "testTrainMulti_7030_splits", tmp_path / "hmdb51"
    _write(lists / "brush_hair_test_split1.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
                                                 "April_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \n"
                                                 "April_09_brush_hair_u_nm_np1_ba_goo_2.avi 0 \n")
    _write(lists / "cartwheel_test_split1.txt", "a.avi 1 \nb.avi 2 \nc.avi 3 \nd.avi 1 \n")
    _write(lists / "cartwheel_test_split2.txt", "a.avi 2 \n")
    _touch_videos(videos, ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                           "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", "cartwheel/a.avi",
                           "cartwheel/b.avi", "cartwheel/c.avi"])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc = main(["csv-from-hmdb51", "--splits_dir", str(lists), "--video_dir", str(videos), "--out_dir", str(out),
                   "--ext", ".avi"])
    assert rc == 1
    assert _rows(out / "train.csv") == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "0"),
                                        ("cartwheel/a.avi", "1")]
    assert _rows(out / "val.csv") == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", "0"),
                                      ("cartwheel/b.avi", "1")]
    split_file = str(lists / "cartwheel_test_split1.txt")
    problems = _problems(caplog)
    assert any(m.startswith(f"{split_file}:3: expected 'video.avi 0|1|2'") for m in problems), problems
    assert any(m.startswith(f"{split_file}:4: cartwheel/d.avi not found") for m in problems)
    assert len(problems) == 2
    ann = prepare.csv_from_hmdb51(str(lists), str(videos), split=2, ext=".avi")
    assert ann.classes == ["cartwheel"] and ann.splits["val"] == [("cartwheel/a.avi", 0)]


def test_csv_from_kinetics(tmp_path, caplog):
    header = "label,youtube_id,time_start,time_end,split\n"
    train = _write(tmp_path / "k400" / "train.csv", header + "abseiling,abc123,10,20,train\n"
                   "air drumming,-de_f456,0,10,train\n"
                   '"passing American football (in game)",ghi,5,15,train\n')
    val = _write(tmp_path / "k400" / "validate.csv", header + "abseiling,jkl,1,11,val\nzumba,xyz,0,10,val\n")
    videos = tmp_path / "videos"
    _touch_videos(videos, ["train/abc123_000010_000020.mp4", "air drumming/-de_f456_000000_000010.mp4",
                           "val/jkl_000001_000011.mp4", "val/xyz_000000_000010.mp4"])
    ann = prepare.csv_from_kinetics(train, val, str(videos))
    assert ann.classes == ["abseiling", "air drumming", "passing American football (in game)"]
    assert ann.splits == {"train": [("train/abc123_000010_000020.mp4", 0),
                                    ("air drumming/-de_f456_000000_000010.mp4", 1)],
                          "val": [("val/jkl_000001_000011.mp4", 0)]}
    assert [str(p) for p in ann.problems] == [f"{train}:4: ghi_000005_000015.mp4 not found in {videos}",
                                              f"{val}:3: unknown label 'zumba' (not in {train})"]


def test_csv_from_diving48(tmp_path):
    vocab = _write(tmp_path / "Diving48_vocab.json", json.dumps([["Back", "15som", "05Twis", "FREE"],
                                                                   ["Back", "15som", "15Twis", "FREE"]]))
    train = _write(tmp_path / "train.json", '[{"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0},\n'
                                            '{"vid_name": "x_00001", "label": 5}]')
    val = _write(tmp_path / "test.json", '[{"vid_name": "y_00002", "label": 0}]')
    videos = tmp_path / "rgb"
    _touch_videos(videos, ["-mmq0PT-u8k_00155.mp4", "x_00001.mp4"])
    ann = prepare.csv_from_diving48(vocab, train, val, str(videos))
    assert ann.classes[1] == "Back 15som 15Twis FREE"
    assert ann.splits == {"train": [("-mmq0PT-u8k_00155.mp4", 1)], "val": []}
    assert [str(p) for p in ann.problems] == [f"{train}:2: label 5 outside [0, 2)",
                                              f"{val}:1: y_00002.mp4 not found in {videos}"]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_encoding_is_byte_deterministic(tmp_path, codec):
    # Full-size clips: large enough that a threaded encoder would split the work differently.
    video, _ = render_clip(np.random.default_rng(1), 1, frames=48, height=128, width=160)
    paths = [str(tmp_path / f"{i}{CODECS[codec][1]}") for i in range(3)]
    for path in paths:
        write_video(path, video, fps=25, codec=codec)
    blobs = [open(path, "rb").read() for path in paths]
    assert blobs[0] == blobs[1] == blobs[2]


def test_shape_labelling_names_the_shapes_and_changes_only_the_object(tmp_path):
    result = make_dataset(str(tmp_path), num_train=6, num_val=0, num_test=0, seed=0, label_kind="shape", **SMALL)
    assert result["classes"] == ["disc", "square", "diamond"]
    labels = [int(line.split()[1]) for line in open(result["train"])]
    assert labels == [0, 1, 2, 0, 1, 2]
    disc, centres = render_clip(np.random.default_rng(5), 0, 3, label_kind="shape", **SMALL)
    square, same_centres = render_clip(np.random.default_rng(5), 1, 3, label_kind="shape", **SMALL)
    np.testing.assert_array_equal(centres, same_centres)  # same path, other shape
    assert (disc != square).any()
    with pytest.raises(ValueError, match="label_kind"):
        make_dataset(str(tmp_path), num_train=1, num_val=0, num_test=0, label_kind="colour", **SMALL)


@pytest.mark.slow
def test_transcode_keeps_each_decoded_frame_once(tmp_path):
    """A variable-rate AVI with dropped frames (header 150, 74 stored): the output holds the 74 frames the
    official reader (decord) counts in the source, not a constant-rate copy with duplicates."""
    ffmpeg = transcode.find_ffmpeg()
    os.makedirs(tmp_path / "src")
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "6", "-vf",
                    r"select='not(mod(n\,7))+gt(mod(n\,5)\,2)'", "-fps_mode", "passthrough", "-c:v", "cinepak",
                    str(tmp_path / "src" / "vfr.avi")], check=True, timeout=60)
    report = transcode_tree(str(tmp_path / "src"), str(tmp_path / "dst"), workers=1)
    assert report.failed == [] and len(report.done) == 1
    with av.open(str(tmp_path / "src" / "vfr.avi")) as c:
        source = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(source) == 74 and _decode(str(tmp_path / "dst" / "vfr.mp4")).shape[0] == 74
