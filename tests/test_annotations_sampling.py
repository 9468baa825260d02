"""Annotation parsing and frame sampling: pure functions."""
import pytest
import torch

from datasets.annotations import AnnotationError, read_annotations
from datasets.frame_indices import dense_indices, segment_indices


def _write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_paths_relative_absolute_and_with_spaces(tmp_path):
    path = _write(tmp_path, "a/x.mp4 3\n/abs/y.mp4 0\n\nmy clip.webm 1\n")
    samples = read_annotations(path, data_root="/data", nb_classes=4, check_files=False)
    assert [(s.path, s.label) for s in samples] == [("/data/a/x.mp4", 3), ("/abs/y.mp4", 0), ("/data/my clip.webm", 1)]


def test_pretraining_list_label_optional(tmp_path):
    path = _write(tmp_path, "a.mp4 0\nb.mp4\n")
    assert [s.path for s in read_annotations(path, "r", with_labels=False, check_files=False)] == ["r/a.mp4", "r/b.mp4"]


def _touch(tmp_path, *names):
    for name in names:
        (tmp_path / name).write_bytes(b"")


def test_tab_separated_labels_and_pretraining_lines_checked_when_read(tmp_path):
    _touch(tmp_path, "a.mp4", "b c.mp4")
    path = _write(tmp_path, "a.mp4\t0\nb c.mp4\n", "pre.csv")
    assert [s.path for s in read_annotations(path, str(tmp_path), with_labels=False)] == [
        str(tmp_path / "a.mp4"), str(tmp_path / "b c.mp4")]
    assert read_annotations(_write(tmp_path, "a.mp4\t3\n"), str(tmp_path))[0].label == 3
    # 'a.mp4 cat' is neither a labelled line nor a file with a space in its name.
    with pytest.raises(AnnotationError, match=r"pre.csv:2: expected 'path' or 'path label'.*'cat'"):
        read_annotations(_write(tmp_path, "a.mp4 0\na.mp4 cat\n", "pre.csv"), str(tmp_path), with_labels=False)


def test_every_bad_line_reported_at_once(tmp_path):
    text = "".join(f"v{i}.mp4 x{i}\n" if i % 2 else f"v{i}.mp4 1\n" for i in range(50))
    with pytest.raises(AnnotationError) as info:
        read_annotations(_write(tmp_path, text), check_files=False)
    message = str(info.value)
    assert "25 bad lines" in message and "train.csv:2:" in message and "train.csv:40:" in message
    assert "train.csv:42:" not in message and "and 5 more" in message  # the first 20 quoted


def test_missing_files_counted_up_front(tmp_path, caplog):
    _touch(tmp_path, *[f"v{i}.mp4" for i in range(8)])
    lines = "".join(f"v{i}.mp4 0\n" for i in range(10))  # v8, v9 missing
    samples = read_annotations(_write(tmp_path, lines), str(tmp_path), max_missing_fraction=0.25)
    assert len(samples) == 10  # kept: the dataset replaces them, as the official loaders do
    assert any("2 of 10 listed files are missing" in r.message and "v8.mp4" in r.message for r in caplog.records)
    with pytest.raises(AnnotationError, match=r"2 of 10 listed files are missing.*--max_bad_fraction 0.1"):
        read_annotations(_write(tmp_path, lines), str(tmp_path), max_missing_fraction=0.1)
    with pytest.raises(AnnotationError, match="none of them exists"):
        read_annotations(_write(tmp_path, lines), str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("text,line,match", [
    ("a.mp4 1\nb.mp4 x\n", 2, "not an integer"),
    ("a.mp4 1\nb.mp4\n", 2, "expected 'path label'"),
    ("a.mp4 1\nc.mp4 2\nb.mp4 7\n", 3, r"label 7 outside \[0, 5\)"),
    ("a.mp4 -1\n", 1, "outside"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, line, match):
    path = _write(tmp_path, text)
    with pytest.raises(AnnotationError, match=f"train.csv:{line}: .*{match}"):
        read_annotations(path, nb_classes=5, check_files=False)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_annotations(str(tmp_path / "nope.csv"))
    with pytest.raises(AnnotationError, match="no samples"):
        read_annotations(_write(tmp_path, "\n"))


def test_dense_train_window_inside_video():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        idx = dense_indices(100, 16, 4, "train", g)
        assert [b - a for a, b in zip(idx, idx[1:])] == [4] * 15
        assert 0 <= idx[0] and idx[-1] <= 99
        starts.add(idx[0])
    assert min(starts) == 0 and max(starts) == 100 - 64 and len(starts) > 20


def test_dense_val_centre_and_test_segments():
    assert dense_indices(100, 16, 4, "val")[0] == 18
    # Test: windows of the list of every 4th frame (25 entries), at int(s * 9 / 4) in it.
    starts = [dense_indices(100, 16, 4, "test", segment=s, num_segments=5)[0] for s in range(5)]
    assert starts == [0, 8, 16, 24, 36]
    assert dense_indices(100, 16, 4, "test", segment=0, num_segments=1)[0] == 16  # one view: centre


def test_dense_short_video_repeats_last_frame():
    assert dense_indices(10, 8, 2, "train", torch.Generator().manual_seed(1)) == [0, 2, 4, 6, 8, 9, 9, 9]


def test_segment_sampling():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = segment_indices(48, 16, "train", g)
        assert all(3 * i <= f < 3 * (i + 1) for i, f in enumerate(idx))  # one frame per segment
    assert segment_indices(48, 16, "val") == [3 * i + 1 for i in range(16)]
    views = [segment_indices(48, 16, "test", segment=j, num_segments=3) for j in range(3)]
    assert views == [[3 * i + j for i in range(16)] for j in range(3)]
    assert segment_indices(48, 16, "test", segment=0, num_segments=1) == [3 * i for i in range(16)]  # starts
    assert segment_indices(8, 16, "val") == [0] * 16  # shorter than 16 frames: frame 0, as the official


def test_sampling_argument_errors():
    with pytest.raises(ValueError, match="segment 2 outside"):
        dense_indices(10, 4, 1, "test", segment=2, num_segments=2)
    with pytest.raises(ValueError, match="mode"):
        segment_indices(10, 4, "eval")
