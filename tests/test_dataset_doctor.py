"""The dataset doctor (`python -m datasets.prepare check`) over a mixed folder: real files of several codecs
and containers from the system's ffmpeg, and broken ones (truncated, zero bytes, random bytes, text
renamed .mp4). Every broken file is found, no valid file is called broken, with 2 worker processes."""
import json
import os

import pytest

from datasets import prepare
from quirk_corpus import find_ffmpeg, make_corpus

pytestmark = [pytest.mark.skipif(find_ffmpeg() is None, reason="needs ffmpeg (apt-get install ffmpeg)"),
              pytest.mark.e2e]  # the doctor's command line end to end
VALID = ["mpeg4_xvid_bframes_avi", "msmpeg4v3_avi", "cinepak_dropped_frames_avi", "vp9_webm", "qcif_176x144_mp4",
         "h264_mpegts", "flv1_flv", "h264_edit_list_mp4"]


def test_doctor_finds_every_broken_file_and_no_valid_one(tmp_path):
    root = tmp_path / "videos"
    valid = make_corpus(str(root / "good"), VALID)
    broken = {"truncated": make_corpus(str(root / "bad"), ["truncated_tail_mp4"])["truncated_tail_mp4"],
              "zero_bytes": str(root / "bad" / "zero.mp4"), "random_bytes": str(root / "bad" / "random.avi"),
              "text": str(root / "bad" / "notes.mp4"), "cut_header": str(root / "bad" / "cut.mp4")}
    open(broken["zero_bytes"], "wb").close()
    with open(broken["random_bytes"], "wb") as f:
        f.write(os.urandom(20000))
    with open(broken["text"], "w") as f:
        f.write("a text file renamed .mp4\n" * 50)
    with open(valid["qcif_176x144_mp4"], "rb") as src, open(broken["cut_header"], "wb") as dst:
        dst.write(src.read(2000))  # a download cut off inside the header
    out = tmp_path / "report"
    status = prepare.main(["check", "--source", str(root), "--out_dir", str(out), "--workers", "2"])
    assert status == 1  # files left out
    report = json.loads((out / "check.json").read_text())
    by_path = {r["path"]: r for r in report["files"]}
    assert set(by_path) == set(valid.values()) | set(broken.values())
    for kind, path in broken.items():
        assert by_path[path]["status"] == "unreadable", (kind, by_path[path])
    for name, path in valid.items():
        assert by_path[path]["status"] not in ("unreadable", "reader_problem", "too_short"), (name, by_path[path])
        assert by_path[path]["frames"] >= 25
    cinepak = by_path[valid["cinepak_dropped_frames_avi"]]  # 2 s at 25 fps, 25 frames kept
    assert cinepak["status"] == "miscounted_header" and cinepak["header_frames"] == 50 > cinepak["frames"] == 25
    clean = (out / "clean.csv").read_text().split()
    assert sorted(clean) == sorted(os.path.relpath(p, root) for p in valid.values())
    assert "| unreadable | 5 |" in (out / "check.md").read_text()
    # The clean list checks clean (a CSV source, paths relative to --data_root): exit 0.
    assert prepare.main(["check", "--source", str(out / "clean.csv"), "--data_root", str(root),
                         "--out_dir", str(tmp_path / "again"), "--workers", "2"]) == 0
