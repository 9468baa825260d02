"""How a run ends: fatal errors exit at once and non-zero, data workers never outlive their run.

A driver's `__main__` calls `run_driver(main, args)`. Whatever ends `main` (a return, a preemption
exit, an error in the main process or in a DataLoader worker, a second SIGTERM), the process then
exits within seconds:
- the exit code is 0, the `SystemExit` code (REQUEUE_EXIT_CODE after a preemption save), or 1 for
  an error; the last line of the log names the cause;
- DataLoader workers (persistent ones too) are told the run is over through `WORKER_INIT`'s shared
  event, so multiprocessing's exit handler, which SIGTERMs and then joins them, never waits on a
  worker that ignores SIGTERM;
- the process group is destroyed without a barrier (a failed rank's peers are not waiting for it
  at one), and a watchdog ends the process if any of this cleanup itself blocks;
- the process then ends with os._exit: the run's files are closed, and no library teardown during
  interpreter finalisation can turn a finished run into a crash.

Why workers ignore SIGTERM / SIGUSR1 at all: Slurm and torchrun signal every process of a job, and
the main process still needs its workers for the few steps until the ranks agree to stop and save.
"""
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, List, Optional

import torch.distributed as dist

logger = logging.getLogger("sigma")

EXIT_GRACE_S = 20.0  # longest the cleanup after a fatal error may take before the process is ended hard


class RunError(RuntimeError):
    """An expected failure with a complete message for the user (bad input, full disk, ...): it is
    logged as one line, without a traceback."""


class _WorkerInit:
    """DataLoader `worker_init_fn`: ignore preemption signals until the main process is exiting.

    Picklable (the Event is inherited by workers when they start, for fork and spawn alike).
    """

    def __init__(self):
        self.exiting = multiprocessing.get_context().Event()

    def __call__(self, worker_id: int) -> None:
        exiting = self.exiting

        def on_signal(signum, frame):
            if exiting.is_set():
                os._exit(128 + signum)  # the main process is gone or going: nothing left to serve

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, on_signal)


WORKER_INIT = _WorkerInit()

# multiprocessing's exit handler runs the finalizers of priority >= 0, then SIGTERMs and joins the
# daemonic children (our DataLoader workers): the event must be set before that terminate.
multiprocessing.util.Finalize(None, WORKER_INIT.exiting.set, exitpriority=100)


_AT_EXIT: list = []  # callables run_driver calls before the process ends (os._exit skips atexit)


def at_exit(fn: Callable[[], None]) -> None:
    """Run `fn` when the driver's process ends, however it ends (a run lock's release)."""
    _AT_EXIT.append(fn)


def _run_at_exit() -> None:
    while _AT_EXIT:
        try:
            _AT_EXIT.pop()()
        except Exception as e:  # cleanup must not mask the run's own cause
            logger.warning("exit cleanup failed: %s", e)


def release_workers() -> None:
    """From now on a SIGTERM ends every DataLoader worker of this process."""
    WORKER_INIT.exiting.set()


def _abort_process_group() -> None:
    """Destroy the process group without the barrier of a clean shutdown."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # a broken group is what brought us here; it must not mask the cause
            logger.warning("process group teardown failed: %s", e)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()


def _watchdog(code: int, grace_s: float) -> None:
    """End the process with `code` if the normal exit has not done so within `grace_s`."""
    def hard_exit():
        sys.stderr.write(f"exit cleanup took over {grace_s:.0f}s: ending the process (exit {code})\n")
        _flush_logs()
        os._exit(code)

    timer = threading.Timer(grace_s, hard_exit)
    timer.daemon = True
    timer.start()


def exit_code_of(e: SystemExit) -> int:
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


def describe(e: BaseException) -> str:
    """One line naming an error, its type only where the message alone would not be clear. An
    error re-raised from a DataLoader worker is named by its original last line; an OS error on a
    file by the path and the reason ("/scratch/out: Permission denied")."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        paths = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{paths}: {e.strerror}"
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "worker" in lines[0]:
        return f"{lines[-1]} (in a data-loader worker)"
    text = lines[0] if len(lines) == 1 else " ".join(lines[:3]) if lines else type(e).__name__
    return text if isinstance(e, RunError) else f"{type(e).__name__}: {text}"


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_tool(main: Callable[[], Optional[int]], prog: str) -> None:
    """The __main__ of a tool without a run folder (data preparation, conversion, pictures): exits with
    `main()`'s status; an OS error on a path (a read-only or missing output folder, a full disk) or a
    RunError ends as one line `prog: error: ...` and status 1 instead of a traceback."""
    try:
        code = main()
    except (OSError, RunError) as e:
        if isinstance(e, OSError) and (e.filename is None or not e.strerror):
            raise  # not about a path: the traceback is the information
        sys.stdout.flush()
        sys.exit(f"{prog}: error: {describe(e)}")
    sys.exit(code or 0)


def stop_workers(timeout_s: float = 5.0) -> None:
    """End this process's daemonic children (DataLoader workers) now rather than at interpreter exit,
    so that none is still decoding (and printing) when the run's last line names its cause."""
    release_workers()
    # DataLoader's SIGCHLD handler would raise "worker exited unexpectedly" for the workers ended here.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [p for p in multiprocessing.active_children() if p.daemon]
    for p in children:
        p.terminate()
    for p in children:
        p.join(timeout_s)


def _log_files() -> List[str]:
    """The files the root logger writes to (the run's train.log on rank 0), shortest path first."""
    return [os.path.relpath(h.baseFilename) if not os.path.relpath(h.baseFilename).startswith("..") else h.baseFilename
            for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _keep_traceback(e: BaseException) -> Optional[str]:
    """Write the traceback of `e` to the log files only (the console gets the one-line cause); the
    file it went to, or None where there is none (then an unexpected error's goes to the console)."""
    text = "".join(traceback.format_exception(e)).rstrip()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (text,), None)
    for handler in handlers:
        handler.handle(record)
    if not handlers and not isinstance(e, RunError) and not (isinstance(e, OSError) and e.filename is not None):
        logger.error("%s", text)
    files = _log_files()
    return files[0] if files else None


def _what_was_left(log_file: str, output_dir: Optional[str], fresh: bool) -> str:
    """'the traceback is in X' and, for an output folder this run created and left holding only its
    log, that it is the only file left (so that a failed start does not leave a puzzle behind)."""
    text = f"the traceback is in {log_file}"
    if fresh and output_dir and os.path.isdir(output_dir):
        # The run lock is released as the process ends (runtime.RunLock): it is not left behind.
        left = sorted(f for f in os.listdir(output_dir) if f != "run.lock")
        if left == [os.path.basename(log_file)]:
            text += f", the only file this run left in {output_dir}"
    return text


def run_driver(main: Callable[[Any], None], args: Any, grace_s: float = EXIT_GRACE_S) -> None:
    """Run a driver's `main(args)` as a process; never returns (see the module docstring).

    `main` must close what it writes (it does: RunLog.close, checkpoints are fsynced); stdout,
    stderr and the log handlers are flushed here. An error ends with one line on the console naming
    its cause; its traceback goes to the run's log file (train.log), or to the console where no log
    file was opened yet and the cause is not self-explanatory.
    """
    cause: Optional[str] = None
    output_dir = getattr(args, "output_dir", None)
    fresh = bool(output_dir) and not os.path.exists(output_dir)
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = exit_code_of(e)
        if not isinstance(e.code, (int, type(None))):
            cause = str(e.code)
    except KeyboardInterrupt:
        code, cause = 130, "interrupted"
    except BaseException as e:  # noqa: BLE001 - every cause must end the process
        if not logging.getLogger().handlers:  # failed before the run set up logging
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log_file = _keep_traceback(e)
        if log_file:
            logger.info("%s", _what_was_left(log_file, output_dir, fresh))
        code, cause = 1, f"run failed: {describe(e)}"
    _watchdog(code, grace_s)
    stop_workers()
    if code != 0:
        _abort_process_group()
    _run_at_exit()
    if cause:
        logger.error("%s", cause)
    _flush_logs()
    # Everything the run writes is written and closed by now. Ending here skips the interpreter's
    # finalisation, where C++ threads of third-party libraries (gloo work objects that DeepSpeed
    # keeps referenced, for one) are destroyed after Python is gone and abort a finished run with
    # "terminate called without an active exception" (exit -6, which Slurm reports as a failure).
    os._exit(code)
