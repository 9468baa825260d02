"""Re-encoding video trees to H.264 so that clips decode fast: one ffmpeg process per video, short
GOPs for cheap random access, sizes that never upscale, every decoded frame kept once.

An output cannot be reported done unless it is: each is written to a partial file no other run uses,
verified (frame count, last frame), renamed into place and recorded in `--dst/.transcode-verified`;
a rerun redoes whatever a killed run left half-done, and the run's ffmpeg processes never outlive it.

The command line is `python -m datasets.prepare transcode` (datasets/prepare.py). A file that fails
is logged and collected in the report; a problem that stops the whole run raises PrepareError.
"""
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from progress import track
from shutdown import pid_alive

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
MUXERS = {".mp4": "mp4", ".mkv": "matroska"}
PARTIAL = ".partial"  # suffix of an output being written (NAME.HOST.PID.RANDOM.partial)
MANIFEST = ".transcode-verified"  # in --dst: the outputs verified so far (see _Manifest)


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
        # The output name is a fresh partial (see _partial_name): no -y, an existing file is an error.
        # -progress reports the frames written, which the verification compares with the output's.
        cmd = [self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats", "-n", "-i", src,
               # Video only: the models never see audio, and dropping it saves space and time.
               "-map", "0:v:0", "-an", "-sn", "-dn",
               # Every decoded frame once, none duplicated or dropped to a constant rate: frame i of the
               # output is frame i of the source for every reader (DATASET.md).
               "-fps_mode", "passthrough",
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
        return cmd + ["-progress", "pipe:1", "-f", self.muxer, dst]


@dataclass
class TranscodeReport:
    """What a transcode run did, by source path."""
    done: List[str] = field(default_factory=list)  # encoded and verified by this run
    skipped: List[str] = field(default_factory=list)  # output verified by an earlier run (or re-verified now)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (source, reason)
    stale_partials: int = 0  # partial files of dead runs removed at start


# ----------------------------------------------------------------------------- child processes
# Every ffmpeg this module starts is registered here, so that an exception or a signal in the
# main thread ends them all; PR_SET_PDEATHSIG (through setpriv) ends them when the parent dies
# even by SIGKILL, which no handler can see.

_children: Set[subprocess.Popen] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()
# util-linux's setpriv sets PR_SET_PDEATHSIG in the child and then execs ffmpeg. A Python preexec_fn
# cannot do it safely: this module starts children from several threads, and a child forked while
# another thread holds a lock (malloc's, the import lock) can deadlock before its exec (seen here).
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _dying_with_parent(cmd: List[str]) -> List[str]:
    """`cmd`, SIGKILLed when the thread that started it dies (the parent's kill -9 too), where
    setpriv is installed; as it is elsewhere (then its closed stdout pipe ends it a little later)."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *cmd] if _SETPRIV else cmd


def _run(cmd: List[str]) -> subprocess.CompletedProcess:
    """Run one ffmpeg to the end (or until the run stops); output captured as text."""
    with _children_lock:
        if _stopping.is_set():
            raise TranscodeStopped(0)
        proc = subprocess.Popen(_dying_with_parent(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
        _children.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        with _children_lock:
            _children.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_children() -> int:
    """Stop starting ffmpegs and SIGKILL the running ones; returns how many were running."""
    with _children_lock:
        _stopping.set()
        procs = list(_children)
    for proc in procs:
        try:
            proc.kill()
        except OSError:
            pass
    return len(procs)


class TranscodeStopped(Exception):
    """The run was stopped by a signal (signum; 0: by an error in another thread); every ffmpeg ended."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# ----------------------------------------------------------------------------- partial files

def _partial_name(dst: str) -> str:
    """`NAME.HOST.PID.RANDOM.partial`, beside `dst`: no other run, on any host, uses this name."""
    host = socket.gethostname().replace(".", "-") or "host"
    return f"{dst}.{host}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL}"


def _remove_stale_partials(dst_root: str) -> int:
    """Remove the partial files of runs that are dead (this host, pid gone; or the old `NAME.partial`
    form of earlier versions). Partials of live runs, here or on other hosts, are left alone."""
    host = socket.gethostname().replace(".", "-") or "host"
    removed = 0
    for dirpath, _, filenames in os.walk(dst_root):
        for name in filenames:
            if not name.endswith(PARTIAL):
                continue
            parts = name[:-len(PARTIAL)].rsplit(".", 3)
            if len(parts) == 4 and parts[2].isdigit():
                if parts[1] != host or pid_alive(int(parts[2])):
                    continue
            try:
                os.remove(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


# ----------------------------------------------------------------------------- verification

class _Manifest:
    """`dst/.transcode-verified`: one tab-separated line per verified output (path relative to dst,
    size, mtime in ns, frames). An output counts as done only when its line matches the file as it is
    now; lines are appended with one write each, so concurrent runs and a kill tear at most the last
    line, which is ignored."""

    def __init__(self, root: str):
        self.path = os.path.join(root, MANIFEST)
        self.root = root
        self.entries: Dict[str, Tuple[int, int, int]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.rstrip("\n").split("\t")
                    if len(fields) == 4 and line.endswith("\n") and all(x.isdigit() for x in fields[1:]):
                        self.entries[fields[0]] = (int(fields[1]), int(fields[2]), int(fields[3]))
        except FileNotFoundError:
            pass
        self._lock = threading.Lock()

    def verified(self, dst: str) -> bool:
        """True when `dst` is the very file (size and mtime) that was verified."""
        entry = self.entries.get(os.path.relpath(dst, self.root))
        try:
            st = os.stat(dst)
        except FileNotFoundError:
            return False
        return entry is not None and entry[:2] == (st.st_size, st.st_mtime_ns)

    def add(self, dst: str, frames: int) -> None:
        st = os.stat(dst)
        rel = os.path.relpath(dst, self.root)
        line = f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{frames}\n".encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.entries[rel] = (st.st_size, st.st_mtime_ns, frames)


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"ffmpeg exited with status {proc.returncode}"


def _progress_frames(stdout: str) -> int:
    """The last `frame=N` of ffmpeg's `-progress pipe:1` output (frames written to the output)."""
    frames = [int(line[6:]) for line in stdout.splitlines() if line.startswith("frame=") and line[6:].isdigit()]
    return frames[-1] if frames else 0


def _count_frames(ffmpeg: str, path: str, decode: bool, from_end: bool = False) -> Tuple[int, Optional[str]]:
    """(frames, None) or (0, reason). decode=False counts packets (no decoding: exact for H.264, where a
    packet is a frame); decode=True counts decoded frames in presentation order, each one (passthrough);
    from_end decodes only the last second."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats"]
    if from_end:
        cmd += ["-sseof", "-1"]
    cmd += ["-i", path, "-map", "0:v:0"]
    cmd += ["-fps_mode", "passthrough"] if decode else ["-c", "copy"]
    proc = _run(cmd + ["-progress", "pipe:1", "-f", "null", "-"])
    if proc.returncode != 0:
        return 0, _last_error(proc)
    return _progress_frames(proc.stdout), None


def _verify_output(ffmpeg: str, path: str, expected: int) -> Optional[str]:
    """None when `path` holds `expected` (> 0) frames and its last frame decodes, else why not."""
    if expected <= 0:
        return "no frame decoded from the source"
    packets, reason = _count_frames(ffmpeg, path, decode=False)
    if reason is None and packets != expected:
        reason = f"output holds {packets} frames, the source {expected}"
    if reason is None:
        tail, reason = _count_frames(ffmpeg, path, decode=True, from_end=True)
        if reason is None and tail == 0:
            reason = "the last frame of the output does not decode"
    return None if reason is None else f"output not verified: {reason}"


def _encode(settings: "EncodeSettings", src: str, dst: str) -> Tuple[int, Optional[str]]:
    """Encode `src` into a fresh partial file, verify it, rename it to `dst`: (frames, None) or (0, reason)."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = _partial_name(dst)
    try:
        try:
            proc = _run(settings.command(src, tmp))
        except OSError as e:
            return 0, f"cannot run ffmpeg ({e})"
        if proc.returncode != 0:
            return 0, _last_error(proc) if proc.returncode > 0 else f"ffmpeg killed by signal {-proc.returncode}"
        frames = _progress_frames(proc.stdout)
        reason = _verify_output(settings.ffmpeg, tmp, frames)
        if reason is not None:
            return 0, reason
        os.replace(tmp, dst)  # atomic: a final name always holds a verified file
        return frames, None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _transcode_one(settings: "EncodeSettings", src: str, dst: str, manifest: _Manifest) -> Tuple[str, Optional[str]]:
    """One source: ("done" | "skipped", None) or ("failed", reason).

    An existing output not in the manifest (an earlier version's, or one renamed just before a kill)
    is verified against the source's decoded frame count; one that fails is encoded again.
    """
    if os.path.exists(dst):
        expected, reason = _count_frames(settings.ffmpeg, src, decode=True)
        if reason is None:
            reason = _verify_output(settings.ffmpeg, dst, expected)
        if reason is None:
            manifest.add(dst, expected)
            return "skipped", None
        logger.warning("%s: %s; encoding it again", dst, reason)
    frames, reason = _encode(settings, src, dst)
    if reason is not None:
        if os.path.exists(dst) and not manifest.verified(dst):
            os.remove(dst)  # an unverified old output that failed verification: never left to be read
        return "failed", reason
    manifest.add(dst, frames)
    return "done", None


def _plan_transcode(src_root: str, dst_root: str, ext: str, manifest: _Manifest,
                    report: TranscodeReport) -> List[Tuple[str, str]]:
    """(source, output) pairs still to encode or verify; verified and clashing ones go into `report`."""
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
            if manifest.verified(dst):
                report.skipped.append(src)
            else:
                jobs.append((src, dst))
    return jobs


@contextlib.contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP (and SIGINT, as KeyboardInterrupt) raise TranscodeStopped in the main thread, whose
    cleanup ends every ffmpeg; outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise TranscodeStopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
    Raises:
        TranscodeStopped on SIGTERM / SIGHUP (KeyboardInterrupt on Ctrl-C), after every ffmpeg of the run
        was ended and its partial file removed.
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
    os.makedirs(dst, exist_ok=True)
    report.stale_partials = _remove_stale_partials(dst)
    if report.stale_partials:
        logger.warning("removed %d partial files left by killed runs", report.stale_partials)
    manifest = _Manifest(dst)
    jobs = _plan_transcode(src, dst, ext, manifest, report)
    logger.info("%d videos to encode or verify, %d verified earlier, %d name clashes", len(jobs),
                len(report.skipped), len(report.failed))
    _stopping.clear()
    executor = ThreadPoolExecutor(max_workers=workers)  # threads suffice: the work is in subprocesses
    try:
        with _signals_stop_the_run():
            futures = {executor.submit(_transcode_one, settings, s, d, manifest): s for s, d in jobs}
            for future in track(as_completed(futures), total=len(futures), desc="transcode", unit="videos"):
                source, (status, reason) = futures[future], future.result()
                if status == "failed":
                    logger.warning("failed: %s: %s", source, reason)
                    report.failed.append((source, reason))
                else:
                    getattr(report, status).append(source)
    except BaseException as e:
        # A signal, Ctrl-C or an error: no new ffmpeg starts, the running ones are killed, and each
        # worker removes its partial file before the executor lets go.
        running = _kill_children()
        executor.shutdown(wait=True, cancel_futures=True)
        logger.error("transcode stopped (%s): %d ffmpeg ended, %d of %d videos finished this run; rerun the "
                     "same command to finish", _describe(e), running, len(report.done), len(jobs))
        raise
    executor.shutdown(wait=True)
    logger.info("transcoded %d, skipped %d (verified), failed %d", len(report.done), len(report.skipped),
                len(report.failed))
    for source, reason in sorted(report.failed):
        logger.error("  %s: %s", source, reason)
    return report


def _describe(e: BaseException) -> str:
    if isinstance(e, TranscodeStopped) and e.signum:
        return signal.Signals(e.signum).name
    return "Ctrl-C" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
