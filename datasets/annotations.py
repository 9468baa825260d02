"""Annotation files in the published formats: one `path label` pair per line, space-separated,
no header. Pretraining lists ignore the label; paths are absolute or relative to a data root.

Per-dataset code is only this parsing: sampling, decoding and augmentation are shared.
"""
import logging
import os
import re
from dataclasses import dataclass
from typing import List, Optional

from shutdown import RunError


logger = logging.getLogger(__name__)


class AnnotationError(RunError, ValueError):
    """Malformed annotation lines; the message names the file and the line numbers."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


MAX_REPORTED = 20  # bad lines (and missing files) quoted in one error


def read_annotations(csv_path: str, data_root: str = "", nb_classes: Optional[int] = None,
                     with_labels: bool = True, check_files: bool = True,
                     max_missing_fraction: float = 1.0) -> List[Sample]:
    """Parse `path label` lines (space or tab before the label; paths may contain spaces).

    Args:
        csv_path: the annotation file.
        data_root: prefix for relative paths.
        nb_classes: when given, labels must lie in [0, nb_classes).
        with_labels: False for pretraining lists: `path` or `path label` lines, the label ignored.
        check_files: look every listed file up now: missing ones are counted and logged with the
            first examples (the dataset replaces them while training), and a pretraining line
            whose last field is no label must name an existing file.
        max_missing_fraction: stop when more of the listed files than this are missing.
    Raises:
        FileNotFoundError for a missing annotation file; AnnotationError naming `file:line` for
        every bad line at once (the first MAX_REPORTED and a count), or for too many missing files.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotation file not found: {csv_path}")
    samples, errors = [], []

    def resolve(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(data_root, path)

    with open(csv_path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            found = _LAST_FIELD.match(line)
            head, tail = (found.group(1), found.group(2)) if found else ("", line)
            where = f"{csv_path}:{lineno}"
            if with_labels:
                if not head:
                    errors.append(f"{where}: expected 'path label', got {line!r}")
                    continue
                if not _is_int(tail):
                    errors.append(f"{where}: label {tail!r} is not an integer")
                    continue
                label = int(tail)
                if label < 0 or (nb_classes is not None and label >= nb_classes):
                    errors.append(f"{where}: label {label} outside [0, {nb_classes})")
                    continue
                path = head
            else:
                label = 0
                if head and _is_int(tail):
                    path = head
                elif not head or not check_files or os.path.exists(resolve(line)):
                    path = line  # one field, or a path with spaces
                else:
                    errors.append(f"{where}: expected 'path' or 'path label', got {line!r} ({tail!r} is no "
                                  f"integer label and the whole line names no file)")
                    continue
            samples.append(Sample(resolve(path), label))
    if errors:
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise AnnotationError(f"{csv_path}: {len(errors)} bad lines:\n" + "\n".join(errors[:MAX_REPORTED]) + more)
    if not samples:
        raise AnnotationError(f"{csv_path}: no samples")
    if check_files:
        _check_files(csv_path, samples, max_missing_fraction)
    return samples


def _check_files(csv_path: str, samples: List[Sample], max_missing_fraction: float) -> None:
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if not missing:
        return
    text = (f"{csv_path}: {len(missing)} of {len(samples)} listed files are missing, e.g. "
            f"{', '.join(missing[:5])}")
    if len(missing) == len(samples) or len(missing) > max_missing_fraction * len(samples):
        raise AnnotationError(f"{text}; more than --max_bad_fraction {max_missing_fraction} (is the data root "
                              f"right? relative paths are joined to it)" if len(missing) < len(samples) else
                              f"{text}: none of them exists (is the data root right? relative paths are "
                              f"joined to it)")
    logger.warning("%s (they are replaced by other samples while training)", text)


# The label field: the last run of non-blanks, after a space or a tab.
_LAST_FIELD = re.compile(r"^(.*?\S)\s+(\S+)$")


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False
