"""Annotation files in the published formats: one `path label` pair per line, space-separated,
no header. Pretraining lists ignore the label; paths are absolute or relative to a data root.

Per-dataset code is only this parsing: sampling, decoding and augmentation are shared.
"""
import os
from dataclasses import dataclass
from typing import List, Optional


class AnnotationError(ValueError):
    """A malformed annotation line; the message names the file and the line number."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


def read_annotations(csv_path: str, data_root: str = "", nb_classes: Optional[int] = None,
                     with_labels: bool = True) -> List[Sample]:
    """Parse `path label` lines.

    Args:
        csv_path: the annotation file.
        data_root: prefix for relative paths.
        nb_classes: when given, labels must lie in [0, nb_classes).
        with_labels: False for pretraining lists, whose label column is optional and ignored.
    Raises:
        FileNotFoundError for a missing file, AnnotationError naming `file:line` for a bad line.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotation file not found: {csv_path}")
    samples = []
    with open(csv_path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            # Paths may contain spaces: the label is the last field.
            head, _, tail = line.rpartition(" ")
            path, label_text = (head, tail) if head else (tail, "")
            if with_labels:
                if not head:
                    raise AnnotationError(f"{csv_path}:{lineno}: expected 'path label', got {line!r}")
                try:
                    label = int(label_text)
                except ValueError:
                    raise AnnotationError(f"{csv_path}:{lineno}: label {label_text!r} is not an integer") from None
                if label < 0 or (nb_classes is not None and label >= nb_classes):
                    raise AnnotationError(f"{csv_path}:{lineno}: label {label} outside [0, {nb_classes})")
            else:
                path = head if head and _is_int(label_text) else line
                label = 0
            samples.append(Sample(path if os.path.isabs(path) else os.path.join(data_root, path), label))
    if not samples:
        raise AnnotationError(f"{csv_path}: no samples")
    return samples


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False
