"""Class-balanced few-shot training subsets, the ones of the official SIGMA `--examples N`
(QUVA-Lab/SIGMA utils_datasets.py `get_subset_data`, commit 13e9c1720be401f99e0512c77db10f2fb7c1ea89).
"""
import math
from typing import List, Sequence

import numpy as np

from datasets.annotations import Sample

OFFICIAL_SUBSET_SEED = 99999  # the official module-level seed


def class_balanced_subset(samples: Sequence[Sample], num_examples: int,
                          seed: int = OFFICIAL_SUBSET_SEED) -> List[Sample]:
    """ceil(num_examples / classes) samples of every class (all of a smaller class).

    Drawn as the official: one np.random.RandomState(seed); classes visited in the iteration
    order of a Python set of the numpy labels; per class `choice(count, k, replace=False)` over
    the class's samples in list order (a permutation of all of them when k >= count). The
    result lists the classes in that order, each in draw order.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    labels = np.array([s.label for s in samples])
    per_class = int(math.ceil(num_examples / len(set(labels.tolist()))))
    rng = np.random.RandomState(seed)
    out: List[Sample] = []
    for label in set(labels):  # numpy scalars: the same set order as the official
        members = np.where(labels == label)[0]
        picks = rng.choice(members.shape[0], min(per_class, members.shape[0]), replace=False)
        out.extend(samples[i] for i in members[picks])
    return out
