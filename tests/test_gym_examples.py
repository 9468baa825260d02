"""FineGym lists in the official format and the official --examples subsets, on generated files."""
import math

import numpy as np
import pytest

from datasets.annotations import AnnotationError, Sample
from datasets.gym import read_gym
from datasets.subset import class_balanced_subset


def _gym_root(tmp_path, labels, missing=()):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "subactions").mkdir()
    lines = []
    for i, label in enumerate(labels):
        name = f"vid{i}_E_000{i}_A_0001_0002"
        lines.append(f"{name}.mp4 {label}")  # the list names .mp4, the video on disk is .avi
        if i not in missing:
            (tmp_path / "subactions" / f"{name}.avi").write_bytes(b"x")
    text = "\n".join(lines) + "\n"
    (tmp_path / "annotations" / "gym99_train.txt").write_text(text)
    (tmp_path / "annotations" / "gym99_val.txt").write_text(text)
    return str(tmp_path)


def test_gym99_paths_labels_and_missing_videos(tmp_path):
    root = _gym_root(tmp_path, [0, 7, 80, 98], missing={1})
    samples = read_gym(root, "train", "GYM99")
    assert [s.label for s in samples] == [0, 80, 98]  # the clip without a video is skipped
    assert samples[0].path.endswith("subactions/vid0_E_0000_A_0001_0002.avi")
    assert [s.label for s in read_gym(root, "test", "GYM99")] == [0, 80, 98]  # the val list


def test_fx_s1_and_ub_s1_keep_and_shift_their_classes(tmp_path):
    root = _gym_root(tmp_path, [5, 6, 16, 17, 73, 74, 88, 89])
    assert [s.label for s in read_gym(root, "train", "FX-S1")] == [0, 10]
    assert [s.label for s in read_gym(root, "val", "UB-S1")] == [0, 14]


def test_gym_bad_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match="gym99_train.txt"):
        read_gym(str(tmp_path), "train")
    root = _gym_root(tmp_path, [1])
    (tmp_path / "annotations" / "gym99_val.txt").write_text("a.mp4 1\nb.mp4\n")
    with pytest.raises(AnnotationError, match="gym99_val.txt:2"):
        read_gym(root, "val")
    with pytest.raises(AnnotationError, match="no FX-S1 sample"):
        read_gym(root, "train", "FX-S1")


def test_examples_subset_is_the_official_draw():
    # 3 classes with 5, 2 and 4 samples, interleaved; --examples 8 -> ceil(8 / 3) = 3 per class.
    labels = [0, 1, 2, 0, 2, 0, 1, 2, 0, 2, 0]
    samples = [Sample(f"v{i}", label) for i, label in enumerate(labels)]
    subset = class_balanced_subset(samples, 8)
    # Official: one RandomState(99999), classes 0, 1, 2, choice(count, min(3, count)) per class.
    rng = np.random.RandomState(99999)
    expected = []
    for label, k in [(0, 3), (1, 2), (2, 3)]:
        members = [i for i, lab in enumerate(labels) if lab == label]
        expected += [f"v{members[j]}" for j in rng.choice(len(members), k, replace=False)]
    assert [s.path for s in subset] == expected
    assert [s.label for s in subset] == [0] * 3 + [1] * 2 + [2] * 3  # class 1 keeps both of its videos
    assert class_balanced_subset(samples, 8) == subset  # the fixed seed
    assert len(class_balanced_subset(samples, 100)) == len(samples)
    assert len(class_balanced_subset(samples, 1)) == 3 * math.ceil(1 / 3)
    with pytest.raises(ValueError):
        class_balanced_subset(samples, 0)


def test_finetuning_builds_gym_sets_with_examples(tmp_path):
    import run_class_finetuning as ft

    root = _gym_root(tmp_path, [0, 0, 0, 1, 1, 2] * 2)
    args = ft.get_args(["--data_set", "GYM99", "--data_path", root, "--examples", "4"])
    datasets = ft.build_datasets(args, nb_classes=99, sampling="dense", default_flip=True, augment=True)
    assert [s.label for s in datasets["train"].samples] == [0, 0, 1, 1, 2, 2]  # ceil(4 / 3) = 2 per class
    assert len(datasets["val"].samples) == len(datasets["test"].samples) == 12  # val list, no subset
