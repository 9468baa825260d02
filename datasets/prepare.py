"""Dataset preparation: re-encode videos so that clips decode fast (datasets/transcode.py), and write
the annotation CSVs (`path label`, space-separated, no header) from each dataset's official split files.

    python -m datasets.prepare transcode --src RAW --dst VIDEOS --short_side 320 --gop 32
    python -m datasets.prepare csv-from-folders --root VIDEOS --out_dir ANN --split_dirs train,val
    python -m datasets.prepare csv-from-ssv2 --labels labels.json --train train.json \\
        --val validation.json --video_dir VIDEOS --out_dir ANN
    python -m datasets.prepare csv-from-ucf101 --splits_dir ucfTrainTestlist --video_dir VIDEOS --out_dir ANN
    python -m datasets.prepare csv-from-hmdb51 --splits_dir testTrainMulti_7030_splits --video_dir VIDEOS --out_dir ANN
    python -m datasets.prepare csv-from-kinetics --train train.csv --val validate.csv --video_dir VIDEOS --out_dir ANN
    python -m datasets.prepare csv-from-diving48 --vocab Diving48_vocab.json --train Diving48_V2_train.json \\
        --val Diving48_V2_test.json --video_dir VIDEOS --out_dir ANN
    python -m datasets.prepare check --source ANN/train.csv --data_root VIDEOS --out_dir CHECK   # the doctor

CSV paths are relative to the video folder (--root or --video_dir): pass that folder as --data_path
when training. A line that cannot be used (missing video, unknown label, malformed line) is logged
as `file:line: problem` and left out; the CSVs are still written and the exit status is 1.
A failed file in `transcode` is handled the same way. Exit status 2: nothing could be done (a
missing split file, unreadable JSON, no ffmpeg). `check` (datasets/doctor.py) reads every video of a
CSV or folder as training will and writes a clean CSV and a report; exit 1 when it left files out.
DATASET.md walks through each dataset.
"""
import argparse
import csv
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from datasets.transcode import MUXERS, VIDEO_EXTS, PrepareError, TranscodeStopped, transcode_tree
from flags import ArgumentParser, DocHelpFormatter as HelpFormatter, Switch
from shutdown import run_tool

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# annotation CSVs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """A line left out of the CSVs; line 0 means the problem concerns a whole file or folder."""
    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}" if self.line else f"{self.source}: {self.message}"


@dataclass
class Annotations:
    """Rows of each output CSV (train/val/test), class names in label order, lines left out."""
    splits: Dict[str, List[Tuple[str, int]]]
    classes: List[str]
    problems: List[Problem] = field(default_factory=list)


def _read_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise PrepareError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield lineno, raw.strip()


def _load_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise PrepareError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _read_json_list(path: str) -> List[Tuple[int, Any]]:
    """The entries of a top-level JSON list, each with the line number where its text starts.

    json.load forgets positions; decoding the list one element at a time keeps them, so that a
    problem with an entry can name its line in a file of 200k entries.
    """
    if not os.path.isfile(path):
        raise PrepareError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    pos = space.match(text).end()
    line, counted = 1, 0  # line number of position `counted`

    def line_at(p: int) -> int:
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, p), p
        return line

    if not text.startswith("[", pos):
        raise PrepareError(f"{path}:{line_at(pos)}: expected a JSON list")
    pos = space.match(text, pos + 1).end()
    entries: List[Tuple[int, Any]] = []
    while not text.startswith("]", pos):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        entries.append((line_at(pos), value))
        pos = space.match(text, end).end()
        if text.startswith(",", pos):
            pos = space.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise PrepareError(f"{path}:{line_at(pos)}: expected ',' or ']' after an entry")
    return entries


def _index_videos(video_dir: str) -> Set[str]:
    """Every file under `video_dir`, as a '/'-separated path relative to it: one walk, then set lookups."""
    if not os.path.isdir(video_dir):
        raise PrepareError(f"video folder not found: {video_dir}")
    found = set()
    for dirpath, _, filenames in os.walk(video_dir):
        rel_dir = os.path.relpath(dirpath, video_dir).replace(os.sep, "/")
        for name in filenames:
            found.add(name if rel_dir == "." else f"{rel_dir}/{name}")
    return found


def _with_ext(path: str, ext: str) -> str:
    """The listed name with the extension the videos have now (e.g. .avi listed, .mp4 after transcode)."""
    return os.path.splitext(path)[0] + ext


def _class_dirs(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise PrepareError(f"folder not found: {folder}")
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def video_exts(exts: Sequence[str]) -> Tuple[str, ...]:
    """Extensions as compared with file names: lower case, with the dot ("MP4" -> ".mp4")."""
    return tuple(sorted({e.lower() if e.startswith(".") else "." + e.lower() for e in exts if e.strip(".")}))


def csv_from_folders(root: str, val_fraction: float = 0.1, split_dirs: Optional[Sequence[str]] = None,
                     seed: int = 0, exts: Sequence[str] = VIDEO_EXTS) -> Annotations:
    """Rows from a folder-per-class tree; labels are the class folders in alphabetical order.

    Args:
        root: `root/<class>/...` or, with split_dirs, `root/<split dir>/<class>/...`.
        val_fraction: without split_dirs, the share of each class drawn (by `seed`) into val, rounded,
            but at least one video and at most all but one of a class that has two or more (a
            small class keeps a val video; a one-video class goes to train, with a warning).
        split_dirs: existing split folders, written to train.csv, val.csv, test.csv in this order;
            the first one defines the classes.
        exts: the file extensions listed (case-insensitive); other files are left out.
    """
    exts = video_exts(exts)
    if not exts:
        raise PrepareError("--ext: give at least one file extension, e.g. .mp4")
    videos = sorted(p for p in _index_videos(root) if os.path.splitext(p)[1].lower() in exts)
    problems: List[Problem] = []
    if split_dirs:
        if len(split_dirs) > 3:
            raise PrepareError("at most three split folders (train, val, test)")
        by_folder = _group_by_folder(videos, depth=2)
        classes = _class_dirs(os.path.join(root, split_dirs[0]))
        ids = {name: i for i, name in enumerate(classes)}
        splits: Dict[str, List[Tuple[str, int]]] = {}
        for out_name, folder in zip(("train", "val", "test"), split_dirs):
            rows = splits.setdefault(out_name, [])
            for name in _class_dirs(os.path.join(root, folder)):
                if name not in ids:
                    problems.append(Problem(os.path.join(root, folder, name), 0,
                                            f"class folder {name!r} is not in {split_dirs[0]!r}: videos left out"))
                    continue
                rows += [(p, ids[name]) for p in by_folder.get(f"{folder}/{name}", [])]
        for out_name, folder in zip(("train", "val", "test"), split_dirs):
            _warn_empty(out_name, [name for label, name in enumerate(classes)
                                   if not any(row_label == label for _, row_label in splits[out_name])],
                        f"in {os.path.join(root, folder)}")
        return Annotations(splits, classes, problems)

    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val_fraction must lie in [0, 1), got {val_fraction}")
    by_folder = _group_by_folder(videos, depth=1)
    classes = _class_dirs(root)
    splits = {"train": [], "val": []}
    no_val = []
    for label, name in enumerate(classes):
        members = list(by_folder.get(name, []))
        if not members:
            problems.append(Problem(os.path.join(root, name), 0, "class folder without videos"))
        # One generator per class: a class's split does not change when other classes change.
        random.Random(f"{seed}/{name}").shuffle(members)
        num_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:  # one val video at least, one train video at least
            num_val = min(max(num_val, 1), len(members) - 1)
        elif val_fraction > 0 and members:
            no_val.append(name)
        splits["val"] += [(p, label) for p in sorted(members[:num_val])]
        splits["train"] += [(p, label) for p in sorted(members[num_val:])]
    _warn_empty("val", no_val, "(one video each, kept for train)")
    return Annotations(splits, classes, problems)


def _warn_empty(split: str, names: List[str], where: str) -> None:
    """A warning naming the classes without a video in `split` (a run scores them on nothing)."""
    if names:
        shown = ", ".join(repr(n) for n in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        logger.warning("%s split: no video of %d class%s %s: %s", split, len(names), "" if len(names) == 1 else "es",
                       where, shown)


def _group_by_folder(paths: Sequence[str], depth: int) -> Dict[str, List[str]]:
    """Paths keyed by their first `depth` folders ('split/class' or 'class'); deeper files included."""
    groups: Dict[str, List[str]] = {}
    for path in paths:
        parts = path.split("/")
        if len(parts) > depth:
            groups.setdefault("/".join(parts[:depth]), []).append(path)
    return groups


def _label_map(path: str) -> Dict[str, int]:
    """SSv2 labels.json: {template without brackets: "id"}; ids must be 0..N-1."""
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise PrepareError(f"{path}: expected an object mapping label names to ids")
    try:
        ids = {name: int(value) for name, value in raw.items()}
    except (TypeError, ValueError):
        raise PrepareError(f"{path}: label ids must be integers") from None
    if sorted(ids.values()) != list(range(len(ids))):
        raise PrepareError(f"{path}: label ids are not 0..{len(ids) - 1}")
    return ids


def _ssv2_answers(path: str) -> Tuple[Dict[str, str], List[Problem]]:
    """SSv2 test-answers.csv: `id;label name` lines."""
    answers, problems = {}, []
    for lineno, line in _read_lines(path):
        vid, sep, name = line.partition(";")
        if not sep:
            problems.append(Problem(path, lineno, f"expected 'id;label', got {line!r}"))
        else:
            answers[vid.strip()] = name.strip()
    return answers, problems


def csv_from_ssv2(labels: str, train: str, val: str, video_dir: str, test: Optional[str] = None,
                  test_answers: Optional[str] = None, ext: str = ".mp4") -> Annotations:
    """Rows from the official Something-Something v2 JSON files.

    Train/validation entries are {"id", "label", "template", "placeholders"}; the class is the
    template with its [ ] brackets removed, as in labels.json. Test entries carry only an id:
    their labels come from `test_answers`. Videos are `<id><ext>` in `video_dir`.
    """
    if test and not test_answers:
        raise PrepareError("the test JSON has no labels: also give --test_answers")
    ids = _label_map(labels)
    classes = sorted(ids, key=ids.get)
    index = _index_videos(video_dir)
    answers, problems = _ssv2_answers(test_answers) if test_answers else ({}, [])
    splits: Dict[str, List[Tuple[str, int]]] = {}
    for split, path in (("train", train), ("val", val), ("test", test)):
        if not path:
            continue
        rows = splits.setdefault(split, [])
        for lineno, entry in _read_json_list(path):
            if not isinstance(entry, dict) or "id" not in entry:
                problems.append(Problem(path, lineno, "entry without an id"))
                continue
            vid = str(entry["id"])
            name = entry.get("template", answers.get(vid))
            if name is None:
                problems.append(Problem(path, lineno, f"video {vid} has no template and no test answer"))
                continue
            name = name.replace("[", "").replace("]", "")
            if name not in ids:
                problems.append(Problem(path, lineno, f"video {vid}: unknown label {name!r} (not in {labels})"))
            elif vid + ext not in index:
                problems.append(Problem(path, lineno, f"video {vid}: {vid + ext} not found in {video_dir}"))
            else:
                rows.append((vid + ext, ids[name]))
    return Annotations(splits, classes, problems)


def csv_from_ucf101(splits_dir: str, video_dir: str, split: int = 1, ext: str = ".mp4") -> Annotations:
    """Rows from UCF101's classInd.txt, trainlist0N.txt and testlist0N.txt (val = the official test split).

    classInd lines are `1 ApplyEyeMakeup` (1-based); list lines are `Class/v_Class_g08_c01.avi [label]`.
    The class is read from the folder part, case-insensitively (the lists spell some class names
    differently from classInd, e.g. HandStandPushups).
    """
    class_ind = os.path.join(splits_dir, "classInd.txt")
    problems: List[Problem] = []
    by_id: Dict[int, str] = {}
    for lineno, line in _read_lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            problems.append(Problem(class_ind, lineno, f"expected 'index ClassName', got {line!r}"))
        else:
            by_id[int(parts[0])] = parts[1]
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise PrepareError(f"{class_ind}: class indices are not 1..{len(by_id)}")
    classes = [by_id[i] for i in sorted(by_id)]
    ids = {name.lower(): i for i, name in enumerate(classes)}
    index = _index_videos(video_dir)
    splits: Dict[str, List[Tuple[str, int]]] = {}
    for split_name, list_name in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
        path, rows = os.path.join(splits_dir, list_name), splits.setdefault(split_name, [])
        for lineno, line in _read_lines(path):
            parts = line.split()
            listed, class_dir = parts[0], parts[0].split("/")[0]
            label = ids.get(class_dir.lower())
            if len(parts) > 2 or "/" not in listed:
                problems.append(Problem(path, lineno, f"expected 'Class/video.avi [label]', got {line!r}"))
            elif label is None:
                problems.append(Problem(path, lineno, f"unknown class {class_dir!r} (not in classInd.txt)"))
            elif len(parts) == 2 and parts[1] != str(label + 1):
                problems.append(Problem(path, lineno, f"label {parts[1]} disagrees with class {class_dir!r} "
                                                      f"({label + 1} in classInd.txt)"))
            elif _with_ext(listed, ext) not in index:
                problems.append(Problem(path, lineno, f"{_with_ext(listed, ext)} not found in {video_dir}"))
            else:
                rows.append((_with_ext(listed, ext), label))
    return Annotations(splits, classes, problems)


def csv_from_hmdb51(splits_dir: str, video_dir: str, split: int = 1, ext: str = ".mp4") -> Annotations:
    """Rows from HMDB51's `<class>_test_split<N>.txt` files (`video.avi flag`: 1 train, 2 test, 0 unused).

    Labels are the class names in alphabetical order; videos are `<class>/<video>` in `video_dir`.
    """
    suffix = f"_test_split{split}.txt"
    if not os.path.isdir(splits_dir):
        raise PrepareError(f"folder not found: {splits_dir}")
    classes = sorted(name[: -len(suffix)] for name in os.listdir(splits_dir) if name.endswith(suffix))
    if not classes:
        raise PrepareError(f"no *{suffix} files in {splits_dir}")
    index = _index_videos(video_dir)
    problems: List[Problem] = []
    splits: Dict[str, List[Tuple[str, int]]] = {"train": [], "val": []}
    for label, name in enumerate(classes):
        path = os.path.join(splits_dir, name + suffix)
        for lineno, line in _read_lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                problems.append(Problem(path, lineno, f"expected 'video.avi 0|1|2', got {line!r}"))
                continue
            if parts[1] == "0":
                continue  # in neither half of this split
            rel = _with_ext(f"{name}/{parts[0]}", ext)
            if rel not in index:
                problems.append(Problem(path, lineno, f"{rel} not found in {video_dir}"))
            else:
                splits["train" if parts[1] == "1" else "val"].append((rel, label))
    return Annotations(splits, classes, problems)


def csv_from_kinetics(train: str, val: str, video_dir: str, test: Optional[str] = None,
                      ext: str = ".mp4") -> Annotations:
    """Rows from the official Kinetics CSVs (`label,youtube_id,time_start,time_end,split`, with header).

    A clip is the file `<youtube_id>_<start:06d>_<end:06d><ext>` anywhere under `video_dir` (flat,
    per split, or per class). Labels are the training label names in alphabetical order.
    """
    by_name: Dict[str, str] = {}
    for rel in sorted(_index_videos(video_dir)):
        by_name.setdefault(rel.rsplit("/", 1)[-1], rel)
    tables = {split: path for split, path in (("train", train), ("val", val), ("test", test)) if path}
    rows_by_split: Dict[str, List[Tuple[int, Dict[str, str]]]] = {}
    for split, path in tables.items():
        if not os.path.isfile(path):
            raise PrepareError(f"file not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
            if missing:
                raise PrepareError(f"{path}:1: header lacks {sorted(missing)}")
            rows_by_split[split] = [(reader.line_num, row) for row in reader]
    classes = sorted({row["label"] for _, row in rows_by_split["train"] if row["label"]})
    ids = {name: i for i, name in enumerate(classes)}
    problems: List[Problem] = []
    splits: Dict[str, List[Tuple[str, int]]] = {}
    for split, rows in rows_by_split.items():
        out = splits.setdefault(split, [])
        for lineno, row in rows:
            try:
                name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}{ext}"
            except (TypeError, ValueError):
                problems.append(Problem(tables[split], lineno, "time_start/time_end are not integers"))
                continue
            if row["label"] not in ids:
                problems.append(Problem(tables[split], lineno, f"unknown label {row['label']!r} (not in {train})"))
            elif name not in by_name:
                problems.append(Problem(tables[split], lineno, f"{name} not found in {video_dir}"))
            else:
                out.append((by_name[name], ids[row["label"]]))
    return Annotations(splits, classes, problems)


def csv_from_diving48(vocab: str, train: str, val: str, video_dir: str, ext: str = ".mp4") -> Annotations:
    """Rows from Diving48's JSON files (entries {"vid_name", "label", ...}); videos are `<vid_name><ext>`.

    Class names are the four vocabulary words of each class in Diving48_vocab.json.
    """
    words = _load_json(vocab)
    if not isinstance(words, list):
        raise PrepareError(f"{vocab}: expected a list of classes")
    classes = [" ".join(map(str, w)) if isinstance(w, list) else str(w) for w in words]
    index = _index_videos(video_dir)
    problems: List[Problem] = []
    splits: Dict[str, List[Tuple[str, int]]] = {}
    for split, path in (("train", train), ("val", val)):
        rows = splits.setdefault(split, [])
        for lineno, entry in _read_json_list(path):
            if not isinstance(entry, dict) or "vid_name" not in entry:
                problems.append(Problem(path, lineno, "entry without a vid_name"))
                continue
            label, rel = entry.get("label"), f"{entry['vid_name']}{ext}"
            if not isinstance(label, int) or not 0 <= label < len(classes):
                problems.append(Problem(path, lineno, f"label {label!r} outside [0, {len(classes)})"))
            elif rel not in index:
                problems.append(Problem(path, lineno, f"{rel} not found in {video_dir}"))
            else:
                rows.append((rel, label))
    return Annotations(splits, classes, problems)


def write_annotations(annotations: Annotations, out_dir: str) -> List[str]:
    """Write `<split>.csv` for each split and classes.txt (line i = label i); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for split, rows in annotations.splits.items():
        if not rows:
            logger.warning("%s: no usable lines", split)
        path = os.path.join(out_dir, f"{split}.csv")
        with open(path, "w", newline="\n", encoding="utf-8") as f:
            f.writelines(f"{rel} {label}\n" for rel, label in rows)
        written.append(path)
    path = os.path.join(out_dir, "classes.txt")
    with open(path, "w", newline="\n", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in annotations.classes)
    return written + [path]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def _run_transcode(args: argparse.Namespace) -> int:
    try:
        report = transcode_tree(args.src, args.dst, short_side=args.short_side, height=args.height, gop=args.gop,
                                crf=args.crf, workers=args.workers, ext=args.ext, fastdecode=args.fastdecode,
                                b_pyramid=args.b_pyramid)
    except TranscodeStopped as e:  # logged by transcode_tree; every ffmpeg is gone
        return 128 + e.signum if e.signum else 1
    except KeyboardInterrupt:
        return 130
    return 1 if report.failed else 0


def _run_csv(args: argparse.Namespace) -> int:
    annotations = args.build(args)
    for problem in annotations.problems:
        logger.warning("%s", problem)
    for path in write_annotations(annotations, args.out_dir):
        logger.info("wrote %s", path)
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in annotations.splits.items())
    logger.info("%d classes; %s videos; %d lines left out", len(annotations.classes), counts,
                len(annotations.problems))
    return 1 if annotations.problems else 0


def _run_check(args: argparse.Namespace) -> int:
    from datasets.doctor import LEFT_OUT, run_check

    reports = run_check(args.source, args.out_dir, data_root=args.data_root, backend=args.video_backend,
                        workers=args.workers, min_frames=args.min_frames, max_gop=args.max_gop)
    if not reports:
        raise PrepareError(f"{args.source}: no videos found")
    return 1 if any(r.status in LEFT_OUT for r in reports) else 0


def _check_parser(sub: argparse._SubParsersAction) -> None:
    """`check`: the dataset doctor (datasets/doctor.py)."""
    from datasets.decoding import BACKENDS, DEFAULT_BACKEND

    help_text = ("the dataset doctor: open, count and decode every video of a CSV or folder; write a clean CSV "
                 "and a JSON / Markdown report (exit 1 when a file is left out)")
    p = sub.add_parser("check", help=help_text, description=help_text, formatter_class=HelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--source", required=True, help="an annotation CSV (`path [label]` lines) or a folder tree")
    g.add_argument("--data_root", default="", help="folder the CSV's relative paths start from (default: none: as written, from the current folder)")
    g.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=[b for b in BACKENDS if b != "torchcodec_cuda"],
                   help="the backend training will use; decord's frames are compared with it where installed")
    g = p.add_argument_group("checks")
    g.add_argument("--min_frames", type=int, default=4, help="fewer frames: too_short (left out)")
    g.add_argument("--max_gop", type=int, default=300, help="keyframes further apart: slow_long_gop")
    g = p.add_argument_group("output")
    g.add_argument("--out_dir", required=True, help="where clean.csv, check.json and check.md go")
    g.add_argument("--workers", type=int, help="parallel processes (default: one per CPU)")
    p.set_defaults(run=_run_check)


def _csv_parser(sub: argparse._SubParsersAction, name: str, help_text: str, video_flag: str = "--video_dir",
                ext: bool = True) -> Tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """A CSV subcommand with its output flags; returns the parser and its input group."""
    p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
    inputs = p.add_argument_group("input")
    inputs.add_argument(video_flag, required=True, help="video folder; CSV paths are relative to it")
    out = p.add_argument_group("output")
    out.add_argument("--out_dir", required=True, help="where <split>.csv and classes.txt go")
    if ext:
        out.add_argument("--ext", default=".mp4", help="extension of the videos in the video folder")
    p.set_defaults(run=_run_csv)
    return p, inputs


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser("python -m datasets.prepare", __doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcode", help="re-encode a video tree to H.264 for fast clip decoding",
                       formatter_class=HelpFormatter)
    g = p.add_argument_group("files")
    g.add_argument("--src", required=True, help="folder searched recursively for " + " ".join(VIDEO_EXTS))
    g.add_argument("--dst", required=True, help="output folder; the source tree is mirrored")
    g.add_argument("--ext", default=".mp4", choices=sorted(MUXERS), help="container of the output files")
    g = p.add_argument_group("size (never upscales; dimensions rounded to even)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--short_side", type=int, help="shorter side in pixels (Kinetics: 320; default: the source's)")
    size.add_argument("--height", type=int,
                      help="height in pixels (SSv2: 240, its original height; default: the source's)")
    g = p.add_argument_group("encoding")
    g.add_argument("--gop", type=int, help="keyframe interval in frames (default: x264's, 250)")
    g.add_argument("--crf", type=int, default=23, help="x264 constant rate factor")
    g.add_argument("--fastdecode", action="store_true",
                   help="x264 -tune fastdecode: no CABAC, deblocking or weighted prediction; cheaper decoding, "
                        "bigger files (DATASET.md)")
    g.add_argument("--b_pyramid", action=Switch, default=True,
                   help="B-frames may be reference frames (x264's default); --no_b_pyramid: none is, so the PyAV "
                        "reader skips decoding every unwanted one")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, help="parallel ffmpeg processes (default: one per CPU)")
    p.set_defaults(run=_run_transcode)

    p, g = _csv_parser(sub, "csv-from-folders", "train/val CSVs from a folder-per-class tree", "--root", ext=False)
    split = g.add_mutually_exclusive_group()
    split.add_argument("--val_fraction", type=float, default=0.1, help="share of each class drawn into val")
    split.add_argument("--split_dirs", type=lambda s: [d for d in s.split(",") if d],
                       help="existing split folders under --root, e.g. train,val (-> train.csv, val.csv) "
                            "(default: none, --val_fraction draws val)")
    g.add_argument("--seed", type=int, default=0, help="seed of the --val_fraction draw")
    g.add_argument("--ext", nargs="+", default=list(VIDEO_EXTS), metavar="EXT",
                   help="file extensions to list (case-insensitive), e.g. --ext .mp4 .webm")
    p.set_defaults(build=lambda a: csv_from_folders(a.root, val_fraction=a.val_fraction, split_dirs=a.split_dirs,
                                                    seed=a.seed, exts=a.ext))

    p, g = _csv_parser(sub, "csv-from-ssv2", "Something-Something v2 CSVs from the official JSON files")
    g.add_argument("--labels", required=True, help="something-something-v2-labels.json")
    g.add_argument("--train", required=True, help="something-something-v2-train.json")
    g.add_argument("--val", required=True, help="something-something-v2-validation.json")
    g.add_argument("--test", help="something-something-v2-test.json, needs --test_answers (default: no test.csv)")
    g.add_argument("--test_answers", help="test-answers.csv, `id;label` lines (default: none)")
    p.set_defaults(build=lambda a: csv_from_ssv2(a.labels, a.train, a.val, a.video_dir, test=a.test,
                                                 test_answers=a.test_answers, ext=a.ext))

    for name, dataset, folder, build in (("csv-from-ucf101", "UCF101", "ucfTrainTestlist", csv_from_ucf101),
                                         ("csv-from-hmdb51", "HMDB51", "testTrainMulti_7030_splits",
                                          csv_from_hmdb51)):
        p, g = _csv_parser(sub, name, f"{dataset} CSVs from an official split (val = its test half)")
        g.add_argument("--splits_dir", required=True, help=f"the official split folder ({folder})")
        g.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="which official split")
        p.set_defaults(build=lambda a, build=build: build(a.splits_dir, a.video_dir, split=a.split, ext=a.ext))

    p, g = _csv_parser(sub, "csv-from-kinetics", "Kinetics CSVs from the official annotation CSVs")
    g.add_argument("--train", required=True, help="train.csv (label,youtube_id,time_start,time_end,split)")
    g.add_argument("--val", required=True, help="validate.csv / val.csv")
    g.add_argument("--test", help="test.csv (default: no test.csv written)")
    p.set_defaults(build=lambda a: csv_from_kinetics(a.train, a.val, a.video_dir, test=a.test, ext=a.ext))

    p, g = _csv_parser(sub, "csv-from-diving48", "Diving48 CSVs from the official JSON files (val = test)")
    g.add_argument("--vocab", required=True, help="Diving48_vocab.json")
    g.add_argument("--train", required=True, help="Diving48_V2_train.json")
    g.add_argument("--val", required=True, help="Diving48_V2_test.json")
    p.set_defaults(build=lambda a: csv_from_diving48(a.vocab, a.train, a.val, a.video_dir, ext=a.ext))

    _check_parser(sub)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand; returns the exit status (0 ok, 1 some lines/files left out, 2 nothing done)."""
    args = get_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return args.run(args)
    except PrepareError as e:
        logger.error("%s", e)
        return 2


if __name__ == "__main__":
    run_tool(main, "python -m datasets.prepare")
