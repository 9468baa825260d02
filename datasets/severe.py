"""Annotation readers of two SEVERE task-shift benchmarks: UCFRep repetition counting and Charades.

UCFRep (Zhang et al., CVPR 2020; SEVERE's Repetition-Counting/datasets/ucf_aug.py) annotates 526
UCF101 videos with one MATLAB file each, `annotations/{train,val}/<video>.mat`, holding a struct
`label` with `duration` (frames), `start_frame`, `end_frame` and `temporal_bound` (a column of
the frames where repetitions begin and end). The target is the repetition count,
len(temporal_bound) - 1; like SEVERE, videos with duration <= 0 or fewer than 3 boundaries are
left out. The video of `v_<Class>_gXX_cXX.mat` is `<video_root>/<Class>/v_<Class>_gXX_cXX.avi`
(UCF101's layout; SEVERE reads the same videos as extracted frames).

Charades (Sigurdsson et al., ECCV 2016) lists one video per row of Charades_v1_train.csv /
Charades_v1_test.csv; its `actions` field is ';'-separated `c<class> <start s> <end s>` triples
over 157 classes, e.g. "c092 11.90 21.20;c147 0.00 12.60", empty when no action is annotated
(such videos are kept: they are negatives of every class). The target is the multi-hot vector
of the classes annotated anywhere in the video.

Bad input stops with an AnnotationError naming the file (and the line, for Charades).
"""
import csv
import logging
import os
import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from datasets.annotations import MAX_REPORTED, AnnotationError

logger = logging.getLogger(__name__)

CHARADES_CLASSES = 157
_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g\d+_c\d+$")
_ACTION = re.compile(r"^c(?P<cls>\d+) (?P<start>\d+(?:\.\d*)?) (?P<end>\d+(?:\.\d*)?)$")


@dataclass(frozen=True)
class RepetitionSample:
    """One UCFRep video: `label` is the repetition count (a float regression target)."""
    path: str
    label: float
    start_frame: int  # the annotated span [start_frame, end_frame], the annotation's frame numbers
    end_frame: int
    num_frames: int  # the annotation's `duration`

    @property
    def count(self) -> float:
        return self.label


@dataclass(frozen=True)
class CharadesSample:
    """One Charades video: the classes annotated in it and the (class, start s, end s) actions."""
    path: str
    video_id: str
    labels: Tuple[int, ...]
    actions: Tuple[Tuple[int, float, float], ...]
    length: float  # seconds, the CSV's `length` (NaN when the column is absent or empty)


def _load_mat(path: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise SystemExit("reading UCFRep's .mat annotations needs scipy: pip install scipy") from None
    try:
        return loadmat(path)
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError on corrupt files
        raise AnnotationError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None


def _ucfrep_record(mat_path: str, video_root: str, ext: str):
    """(video path, count, start, end, duration) of one annotation file, or None when SEVERE skips it."""
    name = os.path.splitext(os.path.basename(mat_path))[0]
    found = _UCF_NAME.match(name)
    if not found:
        raise AnnotationError(f"{mat_path}: the file name is not a UCF101 video name v_<Class>_gXX_cXX")
    mat = _load_mat(mat_path)
    if "label" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise AnnotationError(f"{mat_path}: no 'label' struct (keys: {keys})")
    label = mat["label"][0, 0]
    fields = label.dtype.names or ()
    missing = [f for f in ("duration", "start_frame", "end_frame", "temporal_bound") if f not in fields]
    if missing:
        raise AnnotationError(f"{mat_path}: the 'label' struct lacks {missing} (has {list(fields)})")
    try:
        duration, start, end = (int(label[f].reshape(-1)[0]) for f in ("duration", "start_frame", "end_frame"))
        bounds = label["temporal_bound"].reshape(-1)
    except (IndexError, TypeError, ValueError) as e:
        raise AnnotationError(f"{mat_path}: malformed 'label' fields ({e})") from None
    if duration <= 0 or len(bounds) < 3:
        return None
    path = os.path.join(video_root, found.group("cls"), name + ext)
    return path, float(len(bounds) - 1), start, end, duration


def read_ucfrep(annotation_dir: str, video_root: str, split: str, ext: str = ".avi",
                check_files: bool = True) -> List[RepetitionSample]:
    """UCFRep's videos of `split` ("train" or "val") with their repetition counts, in file-name order.

    Args:
        annotation_dir: the folder holding train/ and val/ with one .mat file per video.
        video_root: UCF101's video folder (<Class>/<video><ext>).
        check_files: leave out (and log) videos that are not there, as SEVERE does; stop when none is.
    """
    folder = os.path.join(annotation_dir, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"UCFRep annotation folder not found: {folder}")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".mat"))
    if not names:
        raise AnnotationError(f"{folder}: no .mat annotation files")
    samples, skipped, missing = [], 0, []
    for name in names:
        record = _ucfrep_record(os.path.join(folder, name), video_root, ext)
        if record is None:
            skipped += 1
        elif check_files and not os.path.isfile(record[0]):
            missing.append(record[0])
        else:
            samples.append(RepetitionSample(*record))
    if skipped:
        logger.info("%s: %d of %d videos left out (no duration or fewer than 2 repetitions), as SEVERE",
                    folder, skipped, len(names))
    if missing:
        logger.warning("%s: %d videos not found, left out; e.g. %s", folder, len(missing), missing[:3])
    if not samples:
        raise AnnotationError(f"{folder}: none of the {len(names)} annotated videos is usable "
                              f"({len(missing)} not found under {video_root})")
    return samples


def _parse_actions(field: str, where: str, num_classes: int) -> Tuple[Tuple[int, float, float], ...]:
    actions = []
    for part in filter(None, (p.strip() for p in field.split(";"))):
        found = _ACTION.match(part)
        if not found:
            raise ValueError(f"{where}: action {part!r} is not 'c<class> <start> <end>'")
        cls = int(found.group("cls"))
        if cls >= num_classes:
            raise ValueError(f"{where}: class c{found.group('cls')} outside [0, {num_classes})")
        actions.append((cls, float(found.group("start")), float(found.group("end"))))
    return tuple(actions)


def read_charades(csv_path: str, video_root: str, num_classes: int = CHARADES_CLASSES,
                  ext: str = ".mp4") -> List[CharadesSample]:
    """The videos of a Charades_v1_{train,test}.csv with their actions, in file order.

    Args:
        csv_path: the official CSV (header with at least `id` and `actions`).
        video_root: folder of the videos, `<id><ext>` (Charades_v1_480/ holds <id>.mp4).
    Raises:
        FileNotFoundError for a missing CSV; AnnotationError naming `file:line` for every bad row
        (the first MAX_REPORTED and a count).
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"Charades annotation file not found: {csv_path}")
    samples, errors = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "actions") if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(f"{csv_path}:1: header {reader.fieldnames} lacks the column(s) {missing}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            video_id = (row["id"] or "").strip()
            try:
                if not video_id:
                    raise ValueError(f"{where}: empty id")
                actions = _parse_actions(row["actions"] or "", where, num_classes)
                length = float(row["length"]) if (row.get("length") or "").strip() else float("nan")
            except ValueError as e:
                errors.append(str(e) if str(e).startswith(where) else f"{where}: length {row.get('length')!r}")
                continue
            samples.append(CharadesSample(os.path.join(video_root, video_id + ext), video_id,
                                          tuple(sorted({a[0] for a in actions})), actions, length))
    if errors:
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise AnnotationError(f"{len(errors)} bad rows in {csv_path}:\n" + "\n".join(errors[:MAX_REPORTED]) + more)
    if not samples:
        raise AnnotationError(f"{csv_path}: no videos listed")
    return samples


def multi_hot(samples: Sequence[CharadesSample], num_classes: int = CHARADES_CLASSES) -> torch.Tensor:
    """[len(samples), num_classes] float targets: 1 for every class annotated in the video."""
    out = torch.zeros(len(samples), num_classes)
    for i, s in enumerate(samples):
        out[i, list(s.labels)] = 1.0
    return out
