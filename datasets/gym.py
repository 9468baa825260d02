"""FineGym lists in the official SIGMA / SEVERE format (QUVA-Lab/SIGMA utils_datasets.py,
commit 13e9c1720be401f99e0512c77db10f2fb7c1ea89, `get_filenames_and_labels_gym*`).

    <data_root>/annotations/gym99_train.txt   training list
    <data_root>/annotations/gym99_val.txt     validation and test list
    <data_root>/subactions/<name>.avi         the videos

Each line is `<name>.<ext> <label>`: as the official, the last three characters of the first
field are replaced by `avi`, and lines whose video is missing are skipped (the official lists
name more clips than are downloadable). GYM99 keeps all 99 classes; FX-S1 (floor exercise) keeps
labels 6..16 and UB-S1 (uneven bars) labels 74..88, shifted to start at 0.
"""
import os
from typing import List

from datasets.annotations import AnnotationError, Sample

# --data_set -> (first label, number of labels) kept from the gym99 lists.
GYM_SETS = {"GYM99": (0, 99), "FX-S1": (6, 11), "UB-S1": (74, 15)}


def read_gym(data_root: str, split: str, data_set: str = "GYM99") -> List[Sample]:
    """Samples of a FineGym split ('train', or 'val'/'test', both the official val list).

    Raises:
        FileNotFoundError for a missing list, AnnotationError naming `file:line` for a bad line
        or a list with no existing video.
    """
    if data_set not in GYM_SETS:
        raise ValueError(f"unknown FineGym set {data_set!r}; choose from {sorted(GYM_SETS)}")
    first, count = GYM_SETS[data_set]
    name = "gym99_train.txt" if split == "train" else "gym99_val.txt"
    list_path = os.path.join(data_root, "annotations", name)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"FineGym list not found: {list_path}")
    video_dir = os.path.join(data_root, "subactions")
    samples = []
    with open(list_path) as f:
        for lineno, raw in enumerate(f, start=1):
            fields = raw.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
                raise AnnotationError(f"{list_path}:{lineno}: expected '<name>.<ext> <label>', got {raw.strip()!r}")
            path = os.path.join(video_dir, fields[0][:-3] + "avi")
            label = int(fields[1])
            if first <= label < first + count and os.path.isfile(path):
                samples.append(Sample(path, label - first))
    if not samples:
        raise AnnotationError(f"{list_path}: no {data_set} sample with a video in {video_dir}")
    return samples
