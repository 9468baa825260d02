"""Re-encoding video trees to H.264 so that clips decode fast: one ffmpeg process per video, short
GOPs for cheap random access, sizes that never upscale, outputs renamed into place only once complete.

The command line is `python -m datasets.prepare transcode` (datasets/prepare.py). A file that fails
is logged and collected in the report; a problem that stops the whole run raises PrepareError.
"""
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from progress import track

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
MUXERS = {".mp4": "mp4", ".mkv": "matroska"}
PARTIAL = ".partial"  # suffix of an output being written; renamed away once ffmpeg succeeds


class PrepareError(Exception):
    """A problem that stops a `datasets.prepare` subcommand: a missing input file, unreadable JSON, no ffmpeg."""


def find_ffmpeg() -> str:
    """`ffmpeg` on PATH, else the static binary shipped with the imageio-ffmpeg package."""
    path = shutil.which("ffmpeg")
    if path:
        return path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise PrepareError("no ffmpeg found: put one on PATH or `pip install imageio-ffmpeg`") from e


def scale_filter(short_side: Optional[int] = None, height: Optional[int] = None) -> str:
    """The ffmpeg `-vf` value that resizes without ever upscaling, to even width and height.

    4:2:0 H.264 needs even dimensions; `-2` lets ffmpeg derive the other side from the aspect
    ratio, rounded to even. With neither argument the size is kept (rounded down to even).
    """
    if short_side and height:
        raise ValueError("give short_side or height, not both")
    if short_side:
        # The shorter side becomes min(itself, short_side); the longer one follows the aspect ratio.
        return (f"scale=w='if(lt(iw,ih),trunc(min(iw,{short_side})/2)*2,-2)'"
                f":h='if(lt(iw,ih),-2,trunc(min(ih,{short_side})/2)*2)'")
    if height:
        return f"scale=w=-2:h='trunc(min(ih,{height})/2)*2'"
    return "scale=w='trunc(iw/2)*2':h='trunc(ih/2)*2'"


@dataclass(frozen=True)
class EncodeSettings:
    """One ffmpeg invocation per video: H.264, video stream only."""
    ffmpeg: str
    vf: str
    crf: int = 23
    gop: Optional[int] = None
    threads: int = 1
    muxer: str = "mp4"
    # Cheaper decoding (BENCHMARKS.md "Decoding less"): x264's fastdecode tune (CAVLC instead of
    # CABAC, no deblocking filter, no weighted prediction), and B-frames without the pyramid, so
    # that no B-frame is a reference and the PyAV reader skips every unwanted one.
    fastdecode: bool = False
    b_pyramid: bool = True

    def command(self, src: str, dst: str) -> List[str]:
        cmd = [self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src,
               # Video only: the models never see audio, and dropping it saves space and time.
               "-map", "0:v:0", "-an", "-sn", "-dn",
               "-vf", self.vf, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf),
               "-threads", str(self.threads)]
        if self.gop:
            # Random access decodes from the previous keyframe: short GOPs make clip reads cheap.
            cmd += ["-g", str(self.gop), "-keyint_min", str(self.gop)]
        if self.fastdecode:
            cmd += ["-tune", "fastdecode"]
        if not self.b_pyramid:
            cmd += ["-b-pyramid", "none"]
        if self.muxer == "mp4":
            cmd += ["-movflags", "+faststart"]  # index first: opening a file reads one block
        # The output is a temporary name without a known extension, hence the explicit muxer.
        return cmd + ["-f", self.muxer, dst]


@dataclass
class TranscodeReport:
    """What a transcode run did, by source path."""
    done: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # output already complete
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (source, reason)


def _plan_transcode(src_root: str, dst_root: str, ext: str,
                    report: TranscodeReport) -> List[Tuple[str, str]]:
    """(source, output) pairs still to encode; finished and clashing ones go into `report`."""
    jobs, claimed = [], {}
    dst_real = os.path.realpath(dst_root)
    for dirpath, dirnames, filenames in os.walk(src_root):
        # Sorted walk: the same order, and the same winner of a name clash, on every run.
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) != dst_real)
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTS:
                continue
            src = os.path.join(dirpath, name)
            dst = os.path.join(dst_root, os.path.splitext(os.path.relpath(src, src_root))[0] + ext)
            if dst in claimed:
                report.failed.append((src, f"same output {dst} as {claimed[dst]}"))
                continue
            claimed[dst] = src
            # Outputs appear under their final name only once complete (see _transcode_one).
            if os.path.exists(dst):
                report.skipped.append(src)
            else:
                jobs.append((src, dst))
    return jobs


def _transcode_one(settings: EncodeSettings, src: str, dst: str) -> Optional[str]:
    """Encode `src` into `dst` through a temporary file; None on success, else the reason it failed."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = dst + PARTIAL
    try:
        proc = subprocess.run(settings.command(src, tmp), capture_output=True, text=True, errors="replace")
    except OSError as e:
        return f"cannot run ffmpeg ({e})"
    if proc.returncode != 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"ffmpeg exited with status {proc.returncode}"
    os.replace(tmp, dst)  # atomic: a killed run never leaves a half file under the final name
    return None


def transcode_tree(src: str, dst: str, short_side: Optional[int] = None, height: Optional[int] = None,
                   gop: Optional[int] = None, crf: int = 23, workers: Optional[int] = None, ext: str = ".mp4",
                   ffmpeg: Optional[str] = None, fastdecode: bool = False, b_pyramid: bool = True) -> TranscodeReport:
    """Re-encode every video under `src` to H.264 under `dst`, mirroring the folder tree.

    Args:
        short_side / height: resize target (at most one; never upscales).
        gop: keyframe interval in frames; None keeps x264's default.
        crf: x264 quality (lower is better and bigger).
        workers: parallel ffmpeg processes (default: one per CPU).
        ext: output extension, `.mp4` or `.mkv`.
        ffmpeg: the ffmpeg binary (default: `find_ffmpeg()`).
        fastdecode: x264's `-tune fastdecode` (bigger files, cheaper decoding).
        b_pyramid: False: no B-frame is a reference frame (`-b-pyramid none`).
    Returns:
        a TranscodeReport; failures are collected there, never raised.
    """
    if not os.path.isdir(src):
        raise PrepareError(f"source folder not found: {src}")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise PrepareError("--dst must differ from --src")
    if ext not in MUXERS:
        raise PrepareError(f"unsupported output extension {ext!r}; choose from {sorted(MUXERS)}")
    workers = workers or os.cpu_count() or 1
    # Split the cores between the parallel encoders rather than oversubscribing them.
    settings = EncodeSettings(ffmpeg or find_ffmpeg(), scale_filter(short_side, height), crf, gop,
                              threads=max(1, (os.cpu_count() or 1) // workers), muxer=MUXERS[ext],
                              fastdecode=fastdecode, b_pyramid=b_pyramid)
    report = TranscodeReport()
    jobs = _plan_transcode(src, dst, ext, report)
    logger.info("%d videos to encode, %d already done, %d name clashes", len(jobs), len(report.skipped),
                len(report.failed))
    executor = ThreadPoolExecutor(max_workers=workers)  # threads suffice: the work is in subprocesses
    try:
        futures = {executor.submit(_transcode_one, settings, s, d): s for s, d in jobs}
        for future in track(as_completed(futures), total=len(futures), desc="transcode", unit="videos"):
            source, reason = futures[future], future.result()
            if reason is None:
                report.done.append(source)
            else:
                logger.warning("failed: %s: %s", source, reason)
                report.failed.append((source, reason))
    finally:
        # On Ctrl-C, drop the queue instead of encoding everything that is left.
        executor.shutdown(wait=True, cancel_futures=True)
    logger.info("transcoded %d, skipped %d (already done), failed %d", len(report.done), len(report.skipped),
                len(report.failed))
    for source, reason in sorted(report.failed):
        logger.error("  %s: %s", source, reason)
    return report
