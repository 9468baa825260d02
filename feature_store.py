"""The files of extract_features.py: atomic writes, per-video records, resume, the index.

OUT/<video id>.npy is written by extract_features.extract_video; OUT/records/<video id>.json after
it marks the video done (resume skips a video only when both exist and the record's settings are
the run's); OUT/failures_rank<R>.tsv lists the videos rank R could not read; OUT/index.json gathers
every record and failure.
"""
import csv
import json
import os
from typing import Any, Dict, List

import numpy as np

from feature_windows import WindowPlan


def temporary_name(path: str) -> str:
    """The temporary file beside `path` that is renamed to it once complete (".<name>.tmp-<pid>")."""
    return f"{os.path.join(os.path.dirname(path), '.' + os.path.basename(path))}.tmp-{os.getpid()}"


def write_atomic(path: str, write) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it to `path`."""
    tmp = temporary_name(path)
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def record_of(video_id: str, path: str, features: np.ndarray, plan: WindowPlan, facts: Dict[str, Any],
              settings: Dict[str, Any]) -> Dict[str, Any]:
    """OUT/records/<video id>.json: what the container said, every window's frames and times, the settings."""
    return {"video": video_id, "path": path, **facts, "timeline_frames": plan.timeline_frames,
            "windows": len(plan), "padded_last_window": plan.padded, "feature_shape": list(features.shape),
            "dtype": str(features.dtype), "start_frame": plan.start_frame.tolist(),
            "start_time": plan.start_time.tolist(), "centre_time": plan.centre_time.tolist(),
            "first_source_frame": plan.frames[:, 0].tolist(), "settings": settings}


def finished(output_dir: str, video_id: str, settings: Dict[str, Any]) -> bool:
    """Whether the video's record exists (written after its array); SystemExit if with other settings."""
    path = os.path.join(output_dir, "records", f"{video_id}.json")
    if not os.path.exists(os.path.join(output_dir, f"{video_id}.npy")) or not os.path.exists(path):
        return False
    with open(path) as f:
        old = json.load(f).get("settings", {})
    changed = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise SystemExit(f"--resume: {path} was extracted with other settings ({'; '.join(changed)}); "
                         f"use another --output_dir")
    return True


def write_index(output_dir: str) -> None:
    """OUT/index.json from every record and failures file there (the last rank to end writes the complete one;
    --resume with nothing left to do writes it again)."""
    records_dir = os.path.join(output_dir, "records")
    videos = []
    for name in sorted(os.listdir(records_dir)):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(records_dir, name)) as f:
                videos.append(json.load(f))
    failures = []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith("failures_rank") and name.endswith(".tsv"):
            with open(os.path.join(output_dir, name)) as f:
                failures += [dict(zip(("video", "path", "reason"), row)) for row in csv.reader(f, delimiter="\t")]
    done = {v["video"] for v in videos}
    index = {"settings": videos[0]["settings"] if videos else None,
             "videos": [{k: v for k, v in r.items() if k != "settings"} for r in videos],
             "failures": [f for f in failures if f["video"] not in done]}
    write_atomic(os.path.join(output_dir, "index.json"), lambda f: f.write(json.dumps(index).encode()))


def remove_partial_files(output_dir: str, video_ids: List[str]) -> None:
    """Temporary files a killed run left for these videos (this rank's: another rank may be writing its own)."""
    mine = set(video_ids)
    for folder in (output_dir, os.path.join(output_dir, "records")):
        for name in os.listdir(folder):
            stem, tmp, _ = name.rpartition(".tmp-")  # ".<id>.npy.tmp-<pid>"
            if tmp and stem.startswith(".") and os.path.splitext(stem[1:])[0] in mine:
                os.remove(os.path.join(folder, name))
