"""Which files make a split of a labelled data set, whatever its annotation format: `path label`
CSV lists, the official FineGym lists, Charades' CSVs (multi-hot targets), UCFRep's .mat files
(repetition counts), ImageNet folders and CIFAR-100 batches (clips of a repeated image)."""
import logging
import os
from typing import List, NamedTuple, Optional

import torch

from datasets.annotations import AnnotationError, Sample, read_annotations
from datasets.gym import GYM_SETS, read_gym
from datasets.images import IMAGE_DATA_SETS, image_split
from datasets.video_dataset import DATA_SETS as VIDEO_DATA_SETS

logger = logging.getLogger(__name__)

# Every --data_set: name -> (classes, frame sampling, training flips); "repeat" for image sets.
DATA_SETS = {**VIDEO_DATA_SETS, **IMAGE_DATA_SETS}

# Charades: SEVERE trains on Charades_v1_train.csv and tests (and validates) on Charades_v1_test.csv.
CHARADES_CSV = {"train": "Charades_v1_train.csv", "val": "Charades_v1_test.csv", "test": "Charades_v1_test.csv"}
# UCFRep: annotations/{train,val}/*.mat; its val split is the test set, as SEVERE's.
UCFREP_SPLIT = {"train": "train", "val": "val", "test": "val"}


class Split(NamedTuple):
    samples: List[Sample]  # (path, class label); for images, placeholders carrying the labels
    targets: Optional[torch.Tensor] = None  # [N, K] multi-hot or [N] counts, beside the labels
    images: Optional[object] = None  # datasets.images source (ImageFiles / ImageArray) of image sets


def read_split(data_set: str, data_path: str, split: str, *, data_root: str = "", nb_classes: Optional[int] = None,
               max_missing_fraction: float = 1.0, class_list: Optional[str] = None) -> Split:
    """The videos (or images) of `split` ("train", "val" or "test") and their labels.

    CSV data sets read data_path/<split>.csv, test falling back to val.csv; video paths are
    relative to `data_root` (default: data_path).
    """
    root = data_root or data_path
    if data_set in GYM_SETS:  # the official lists; val and test are both gym99_val.txt
        return Split(read_gym(data_path, split, data_set))
    if data_set == "Charades":
        from datasets.severe import multi_hot, read_charades

        videos = read_charades(os.path.join(data_path, CHARADES_CSV[split]), root)
        return Split([Sample(v.path, 0) for v in videos], multi_hot(videos))
    if data_set == "UCFRep":
        from datasets.severe import read_ucfrep

        videos = read_ucfrep(os.path.join(data_path, "annotations"), root, UCFREP_SPLIT[split])
        return Split([Sample(v.path, 0) for v in videos], torch.tensor([v.count for v in videos]))
    if data_set in IMAGE_DATA_SETS:
        source = image_split(data_set, data_path, "train" if split == "train" else "val", class_list)
        if nb_classes is not None and source.labels and max(source.labels) >= nb_classes:
            raise AnnotationError(f"{data_path} ({split}): label {max(source.labels)} outside [0, {nb_classes}): "
                             f"--nb_classes {nb_classes} is fewer than the classes found")
        return Split([Sample(f"{data_set}:{split}:{i}", y) for i, y in enumerate(source.labels)], images=source)
    csv_path = os.path.join(data_path, f"{split}.csv")
    if split == "test" and not os.path.exists(csv_path):
        logger.info("no %s: testing on val.csv", csv_path)
        csv_path = os.path.join(data_path, "val.csv")
    return Split(read_annotations(csv_path, root, nb_classes=nb_classes, max_missing_fraction=max_missing_fraction))
