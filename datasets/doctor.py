"""The dataset doctor (`python -m datasets.prepare check`): every video of a CSV or a folder tree opened,
counted and decoded before a long job, each classified, a clean CSV and a JSON / Markdown report written.

Per file (in parallel worker processes): opens it with the chosen backend (PyAV by default), the
container header's frame count against the counted one (packets, no decoding), duration, rate,
codec and size; decodes sampled clips (a val-style clip around the middle, the last frames) and,
where decord is installed, compares them with decord's. Classes, worst first:
    unreadable         no backend reads it (missing, empty, not a video, truncated before any frame)
    reader_problem     the chosen backend cannot read it but decord can (use --video_backend decord)
    too_short          fewer frames than --min_frames
    backend_disagrees  decord returns other frames (often decord's own seek bugs: DATASET.md "Backends")
    miscounted_header  the header's frame count is not the number of frames (dropped-frame AVI)
    slow_long_gop      keyframes further apart than --max_gop frames: every clip decodes a long run
    needs_transcode    a codec or pixel format that is slow or converted differently by each backend
                       (10-bit, 4:2:2, MPEG-4 Part 2 with B-frames, ...): `prepare transcode` fixes it
    ok
The clean CSV keeps every line whose file is not unreadable, too short or a reader problem.
"""
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from datasets.decoding import DEFAULT_BACKEND, READER_PROBLEM, VideoError, open_video, read_video
from datasets.transcode import VIDEO_EXTS
from progress import Progress

logger = logging.getLogger(__name__)

CLASSES = ("unreadable", "reader_problem", "too_short", "backend_disagrees", "miscounted_header", "slow_long_gop",
           "needs_transcode", "ok")
LEFT_OUT = ("unreadable", "reader_problem", "too_short")
EXTS = VIDEO_EXTS + (".ts", ".flv", ".3gp", ".m4v", ".mpg", ".mpeg", ".wmv")  # what a folder search lists
# Codecs and pixel formats worth re-encoding to 8-bit 4:2:0 H.264 (DATASET.md "Backends").
SLOW_CODECS = {"mpeg4", "msmpeg4v2", "msmpeg4v3", "cinepak", "mjpeg", "flv1", "h263", "mpeg2video", "av1"}
CONVERTED_FORMATS = ("10le", "10be", "12le", "422", "444")
PIXEL_BOUND = 3  # levels: codec rounding between FFmpeg builds; beyond it decord "disagrees"


@dataclass
class FileReport:
    path: str
    line: str  # the CSV line (or the relative path for a folder)
    status: str = "ok"
    reasons: List[str] = field(default_factory=list)
    codec: str = ""
    pix_fmt: str = ""
    width: int = 0
    height: int = 0
    rate: float = 0.0
    duration_s: float = 0.0
    header_frames: int = 0
    frames: int = 0
    max_gop: int = 0


def inputs(source: str, data_root: str = "") -> List[Tuple[str, str]]:
    """(path, line) of each video: the lines of a CSV (`path [label]`, relative to `data_root`), or
    every video file under a folder."""
    if os.path.isdir(source):
        found = []
        for folder, _, names in sorted(os.walk(source)):
            for name in sorted(names):
                if name.lower().endswith(EXTS):
                    path = os.path.join(folder, name)
                    found.append((path, os.path.relpath(path, source)))
        return found
    rows = []
    with open(source) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            rel = parts[0] if len(parts) == 2 and parts[1].lstrip("-").isdigit() else line.strip()
            rows.append((rel if os.path.isabs(rel) else os.path.join(data_root, rel), line))
    return rows


def _clips(n: int) -> List[List[int]]:
    """Frame indices of the sampled clips: a val-style clip (16 frames, every 2nd, around the middle)
    and the last 8 frames (where a cut-off download fails)."""
    start = max(0, n // 2 - 16)
    return [sorted({min(n - 1, start + 2 * i) for i in range(16)}), list(range(max(0, n - 8), n))]


def check_file(path: str, line: str, backend: str = DEFAULT_BACKEND, min_frames: int = 4,
               max_gop: int = 300) -> FileReport:
    """Open, count, decode and classify one file (runs in a worker process)."""
    report = FileReport(path, line)
    reasons: Dict[str, str] = {}
    try:
        clips = read_video(path, backend, lambda reader: _read(reader, report), 1)
    except VideoError as e:
        cls = "reader_problem" if e.reason.startswith(READER_PROBLEM) else "unreadable"
        report.status, report.reasons = cls, [e.reason]
        return report
    except Exception as e:  # a decoder crash of an unexpected kind: still one line, the file named
        report.status, report.reasons = "unreadable", [f"{type(e).__name__}: {e}"[:200]]
        return report
    if report.frames < min_frames:
        reasons["too_short"] = f"{report.frames} frames (< {min_frames})"
    if backend != "decord":
        disagreement = _compare_with_decord(path, report.frames, clips)
        if disagreement:
            reasons["backend_disagrees"] = disagreement
    if report.header_frames and report.header_frames != report.frames:
        reasons["miscounted_header"] = f"header says {report.header_frames} frames, the stream holds {report.frames}"
    if report.max_gop > max_gop:
        reasons["slow_long_gop"] = f"keyframes up to {report.max_gop} frames apart (> {max_gop})"
    if report.codec in SLOW_CODECS or any(s in report.pix_fmt for s in CONVERTED_FORMATS):
        reasons["needs_transcode"] = f"{report.codec} {report.pix_fmt}: `python -m datasets.prepare transcode`"
    if reasons:
        report.status = next(c for c in CLASSES if c in reasons)
        report.reasons = [f"{c}: {reasons[c]}" for c in CLASSES if c in reasons]
    return report


def _read(reader, report: FileReport) -> List[torch.Tensor]:
    """Fill `report` from an open reader; the sampled clips' frames."""
    report.frames = reader.num_frames
    report.header_frames = getattr(reader, "header_frames", 0) or 0
    stream = getattr(reader, "_stream", None)
    if stream is not None:  # PyAV: the stream's description, and the keyframes' spacing from the packets
        report.codec = stream.codec_context.codec.canonical_name  # "av1", not the decoder "libdav1d"
        report.pix_fmt = str(stream.codec_context.pix_fmt or "")
        report.width, report.height = stream.width, stream.height
        report.rate = float(stream.average_rate or 0)
        keyframes = [0] + reader._timeline.keyframes + [reader.num_frames]  # where decoding can start
        report.max_gop = max(b - a for a, b in zip(keyframes, keyframes[1:]))
        report.duration_s = report.frames / report.rate if report.rate else 0.0
    return [reader.get_frames(indices) for indices in _clips(reader.num_frames)]


def _compare_with_decord(path: str, frames: int, clips: List[torch.Tensor]) -> str:
    """'' where decord is absent or agrees; else how it differs."""
    try:
        reader = open_video(path, "decord")
    except ImportError:
        return ""
    except VideoError as e:
        return f"decord cannot read it ({e.reason})"
    if reader.num_frames != frames:
        return f"decord counts {reader.num_frames} frames, the reader {frames}"
    try:
        for indices, ours in zip(_clips(frames), clips):
            theirs = reader.get_frames(indices)
            if theirs.shape != ours.shape or (theirs.int() - ours.int()).abs().max() > PIXEL_BOUND:
                return f"decord returns other frames for the clip {indices[0]}-{indices[-1]}"
    except VideoError as e:
        return f"decord fails on a clip ({e.reason})"
    return ""


def _check_one(job: Tuple[str, str, str, int, int]) -> FileReport:
    torch.set_num_threads(1)
    return check_file(*job)


def run_check(source: str, out_dir: str, data_root: str = "", backend: str = DEFAULT_BACKEND,
              workers: Optional[int] = None, min_frames: int = 4, max_gop: int = 300) -> List[FileReport]:
    """Check every video of `source` (a CSV or a folder) in `workers` processes; write
    `out_dir`/clean.csv, check.json and check.md; returns the reports in input order."""
    jobs = [(path, line, backend, min_frames, max_gop) for path, line in inputs(source, data_root)]
    workers = workers or os.cpu_count() or 1
    progress = Progress(len(jobs), "dataset check", unit="videos")
    start = time.monotonic()
    reports: List[FileReport] = []
    with ProcessPoolExecutor(workers) as pool:
        for report in pool.map(_check_one, jobs, chunksize=4):
            reports.append(report)
            progress.update()
    progress.close()
    seconds = time.monotonic() - start
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "clean.csv"), "w") as f:
        f.writelines(r.line + "\n" for r in reports if r.status not in LEFT_OUT)
    counts = {c: sum(r.status == c for r in reports) for c in CLASSES}
    summary = {"source": source, "backend": backend, "files": len(reports), "workers": workers,
               "seconds": round(seconds, 2), "files_per_s": round(len(reports) / seconds, 2) if seconds else 0,
               "counts": counts}
    with open(os.path.join(out_dir, "check.json"), "w") as f:
        json.dump({"summary": summary, "files": [asdict(r) for r in reports]}, f, indent=1)
    with open(os.path.join(out_dir, "check.md"), "w") as f:
        f.write(_markdown(summary, reports))
    logger.info("%d files checked in %.1f s (%d workers): %s; clean list %s", len(reports), seconds, workers,
                ", ".join(f"{c} {n}" for c, n in counts.items() if n), os.path.join(out_dir, "clean.csv"))
    for r in reports:
        if r.status != "ok":
            logger.warning("%s: %s: %s", r.path, r.status, "; ".join(r.reasons))
    return reports


def _markdown(summary: dict, reports: Sequence[FileReport]) -> str:
    lines = [f"# Dataset check of {summary['source']}", "",
             f"{summary['files']} files, backend {summary['backend']}, {summary['workers']} workers, "
             f"{summary['seconds']} s.", "", "| class | files |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in summary["counts"].items()]
    lines += ["", "| file | class | frames (header) | codec | size | reasons |", "|---|---|---|---|---|---|"]
    for r in reports:
        if r.status != "ok":
            lines.append(f"| {r.line} | {r.status} | {r.frames} ({r.header_frames}) | {r.codec} {r.pix_fmt} | "
                         f"{r.width}x{r.height} | {'; '.join(r.reasons)} |")
    return "\n".join(lines) + "\n"
