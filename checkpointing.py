"""Checkpoint files: atomic saving, weights_only loading, the resumable training state (model,
optimizer, scaler, RNG of every rank) and resuming from it, state-dict lookup in published
files, pruning.

A checkpoint is a plain dict (state dicts, "epoch", "step", config and RNG states as primitives)
so that it loads with ``torch.load(weights_only=True)``, which never runs pickled code. Files in an
output directory are ``checkpoint-{epoch}.pth`` at epoch ends and a rolling
``checkpoint-latest.pth`` written every N steps; resume takes the newest file that loads.
"""
import errno
import json
import glob
import logging
import os
import pickle
import random
import re
import shutil
from collections import OrderedDict
from itertools import groupby
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from distributed import DistEnv, barrier, broadcast_object, gather_objects, is_main_process
from shutdown import RunError

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "epoch", "step")
LATEST_NAME = "checkpoint-latest.pth"
_EPOCH_NAME = re.compile(r"checkpoint-(\d+)\.pth")

# Exact types, not isinstance: np.float64 subclasses float and a namedtuple subclasses tuple, yet
# the weights_only unpickler rejects both.
_PRIMITIVES = (int, float, bool, str, type(None))
_CONTAINERS = (dict, OrderedDict, list, tuple)


class CheckpointError(RunError):
    """A checkpoint file that cannot be read or lacks the keys a resume needs."""

    def __init__(self, path: str, reason: str, message: Optional[str] = None):
        super().__init__(message or f"cannot load checkpoint {path}: {reason}")
        self.path = path
        self.reason = reason


class CheckpointMismatch(CheckpointError, ValueError):
    """Weights that do not fit the model they are loaded into (another size, other tensors)."""


class NonFiniteParameters(RunError, FloatingPointError):
    """Parameters with NaN or inf at a save: nothing is written."""


class DiskFullError(RunError):
    """A checkpoint that did not fit on its disk (the previous files are untouched)."""


# What torch.save writes: a zip archive (torch >= 1.6) or, in the legacy format, a pickle.
_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", 0x80
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def read_torch_file(path: str) -> Any:
    """torch.load(path, weights_only=True) onto the CPU, with errors that say what the file is.

    Raises:
        CheckpointError: missing; not written by torch.save (an image, a text file, ...); holding
            pickled code or objects (refused, never run); truncated or otherwise unreadable.
    """
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == _PICKLE_PROTO and head[1] <= 5)):
        raise CheckpointError(path, "not a PyTorch checkpoint",
                              f"{path} is not a PyTorch checkpoint (it starts with {head!r}; torch.save files are "
                              f"zip archives or pickles)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSAFE_GLOBAL.search(str(e))
        if found is None:
            raise CheckpointError(path, f"unreadable ({str(e).strip().splitlines()[-1][:200]})") from None
        raise CheckpointError(
            path, "holds pickled code",
            f"{path} holds pickled code or objects ({found.group(1)}) and was not loaded: checkpoints are read "
            f"as tensors and plain values only, so that a file can never run code. Save its state dicts "
            f"(tensors, numbers, strings) with torch.save to get a file that loads") from None
    except Exception as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise CheckpointError(path, f"{type(e).__name__}: {lines[0][:300]} (truncated or damaged?)") from None


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _disk_full(error: BaseException, directory: str, needed: int) -> bool:
    """Whether a failed write ran out of space (torch.save reports ENOSPC as a generic RuntimeError)."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    try:
        return shutil.disk_usage(directory).free < needed
    except OSError:
        return False


def checkpoint_path(output_dir: str, epoch: Optional[int] = None) -> str:
    """``checkpoint-{epoch}.pth`` in `output_dir`, or the rolling latest file when `epoch` is None."""
    return os.path.join(output_dir, LATEST_NAME if epoch is None else f"checkpoint-{epoch}.pth")


def _check_primitive(value: Any, key_path: str) -> None:
    """Raise TypeError naming the first value under `value` that weights_only loading would reject."""
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _PRIMITIVES:
        return
    if kind not in _CONTAINERS:
        raise TypeError(f"checkpoint state must hold only tensors, numbers, strings, bools, None and "
                        f"lists/tuples/dicts of those; {key_path or '<root>'}: {kind.__name__}")
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_primitive(item, f"{key_path}[{i}]")
        return
    for key, item in value.items():
        child = f"{key_path}.{key}" if key_path else str(key)
        if type(key) not in _PRIMITIVES:
            raise TypeError(f"checkpoint state dict keys must be primitives; {child}: key of type {type(key).__name__}")
        _check_primitive(item, child)


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write `state` to `path` so that a crash at any moment leaves either the old or the new file.

    Args:
        path: destination file; its directory must exist.
        state: plain dict of tensors and primitives (TypeError, naming the key path, otherwise).
    """
    if type(state) not in (dict, OrderedDict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_primitive(state, "")
    # Same directory as `path`, so os.replace is a rename within one filesystem (atomic on POSIX);
    # the pid keeps concurrent writers from sharing a temp file.
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        directory = os.path.dirname(os.path.abspath(path))
        needed = _tensor_bytes(state)
        if isinstance(e, Exception) and _disk_full(e, directory, needed):
            good = [p for _, p in _by_mtime(directory)]  # `path` itself, if it existed, is still the old file
            raise DiskFullError(
                f"no space left on {directory} ({shutil.disk_usage(directory).free / 2**20:.0f} MB free): "
                f"{os.path.basename(path)} needs about {needed / 2**20:.0f} MB; last good checkpoint is "
                f"{good[0] if good else 'none (nothing saved yet)'}") from None
        raise
    _fsync_dir(path)


def link_checkpoint(source: str, path: str) -> bool:
    """Make `path` a hard link of the saved checkpoint `source`, atomically (no second write of the
    same bytes). Returns False where the filesystem has no hard links; the caller then saves."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        logger.info("cannot hard-link %s to %s (%s): writing it again", path, source, e)
        return False
    _fsync_dir(path)
    return True


def load_model_state(model: torch.nn.Module, state: Dict[str, Any], path: str) -> None:
    """model.load_state_dict(state["model"]) with one readable line when the shapes or names differ,
    naming the first mismatch and the model the checkpoint was written for."""
    weights = state["model"]
    own = model.state_dict()
    mismatched = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if not (mismatched or missing or unexpected):
        model.load_state_dict(weights)
        return
    written_for = (state.get("config") or {}).get("model", "another model")
    if mismatched:
        k = mismatched[0]
        first = f"{k} has shape {list(weights[k].shape)} there, {list(own[k].shape)} here"
    else:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
    counts = f"{len(mismatched)} shape mismatches, {len(missing)} missing and {len(unexpected)} unexpected keys"
    raise CheckpointError(path, "model mismatch",
                          f"{path} was written for {written_for} and does not fit this model ({first}; {counts}): "
                          f"resume it with the same model flags, or start a new run with --no_auto_resume or "
                          f"another --output_dir")


def _fsync_dir(path: str) -> None:
    # Persist the rename itself: without this a power loss can bring back the old directory entry.
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str, required: Sequence[str] = REQUIRED_KEYS) -> Dict[str, Any]:
    """Load a checkpoint with weights_only=True onto the CPU.

    Args:
        required: top-level keys it must have (a resume needs "model", "epoch" and "step"; a
            published weights file has only "model" or "module": pass ()).
    Raises:
        CheckpointError: the file is missing, unreadable, not a dict, or lacks a required key.
    """
    state = read_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a dict, got {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(path, f"missing keys {missing}; has {sorted(map(str, state))[:10]}")
    return state


def rng_state() -> Dict[str, Any]:
    """Python, numpy, torch CPU and (when present) all CUDA generator states, as tensors and primitives."""
    py_version, py_words, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        # 624 Mersenne Twister words plus the position index; all < 2**32, so int64 holds them.
        "python": {"version": py_version, "state": torch.tensor(py_words, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "numpy": {"bit_generator": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),  # uint8 tensor
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's own device only: get_rng_state_all() would create a context on every GPU
        # the process can see (each rank on all eight of a node).
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore generator states captured by `rng_state` (after a weights_only load)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["bit_generator"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    # "cuda_device": this rank's device; "cuda": older checkpoints, one state per visible device.
    cuda, every_device = state.get("cuda_device"), state.get("cuda")
    if cuda is None and every_device is None:
        return
    if not torch.cuda.is_available():
        logger.warning("checkpoint has CUDA RNG states but CUDA is unavailable: not restored")
        return
    if cuda is None:
        device = torch.cuda.current_device()
        if device >= len(every_device):
            logger.warning("checkpoint has %d CUDA RNG states, none for cuda:%d: not restored", len(every_device),
                           device)
            return
        cuda = every_device[device]
    torch.cuda.set_rng_state(cuda)  # the current device: this rank's


def _by_mtime(output_dir: str) -> List[Tuple[int, str]]:
    """(mtime_ns, path) of every checkpoint file, newest first, ties in name order."""
    # Only epoch files and the rolling latest file: "*.pth.tmp-{pid}" files of interrupted saves and
    # side files such as checkpoint-best.pth are never resumed from.
    entries = []
    for path in glob.glob(os.path.join(glob.escape(output_dir), "checkpoint-*.pth")):
        name = os.path.basename(path)
        if name != LATEST_NAME and not _EPOCH_NAME.fullmatch(name):
            continue
        try:
            entries.append((os.stat(path).st_mtime_ns, path))
        except FileNotFoundError:  # pruned between glob and stat
            continue
    return sorted(entries, key=lambda e: (-e[0], e[1]))


def find_resume_checkpoint(output_dir: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The newest checkpoint in `output_dir` that loads, as (path, state); None when there is none.

    Unreadable files are logged and skipped, never deleted (they may be wanted for a post-mortem).
    Files with equal mtimes (coarse filesystem clocks) are ordered by their stored "step".
    """
    for _, group in groupby(_by_mtime(output_dir), key=lambda e: e[0]):
        valid = []
        for _, path in group:
            try:
                valid.append((path, load_checkpoint(path)))
            except CheckpointError as e:
                logger.warning("skipping checkpoint %s: %s", path, e.reason)
        if valid:
            return max(valid, key=lambda ps: ps[1]["step"])  # max keeps the first (name order) on ties
    return None


def prune_checkpoints(output_dir: str, keep_last: int) -> List[str]:
    """Delete epoch checkpoints older than the newest `keep_last` (by epoch number; <= 0 keeps all).
    The rolling latest file is never touched. Returns the removed paths."""
    if keep_last <= 0:
        return []
    epochs = []
    for name in os.listdir(output_dir):
        match = _EPOCH_NAME.fullmatch(name)
        if match:
            epochs.append((int(match.group(1)), os.path.join(output_dir, name)))
    # Epoch numbers, not mtimes: they order epoch files even after a copy reset the timestamps.
    epochs.sort(reverse=True)
    removed = []
    for _, path in epochs[keep_last:]:
        os.remove(path)
        removed.append(path)
    if removed:
        logger.info("pruned old checkpoints: %s", [os.path.basename(p) for p in removed])
    return removed


def state_dict_from(checkpoint: Any, path: str, keys: str = "model|module") -> Dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint: the first of `keys` ('|'-separated) that the file
    holds, else the file itself (published weights are often a bare state dict).

    Raises:
        CheckpointError: what is found is not a dict of tensors (names the file's top-level keys).
    """
    found = next((checkpoint[k] for k in keys.split("|") if isinstance(checkpoint, dict) and k in checkpoint),
                 checkpoint)
    if not isinstance(found, dict) or not all(isinstance(v, torch.Tensor) for v in found.values()):
        top = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(path, f"no state dict under {keys!r}",
                              f"{path}: no state dict under {keys!r}; top-level keys: {top}")
    return found


def gather_rng_states(env: DistEnv) -> list:
    """Every rank's RNG state, in rank order (a collective when distributed)."""
    if env.world_size == 1:
        return [rng_state()]
    states = [None] * env.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def check_finite(model: nn.Module, what: str, last_good: str = "") -> None:
    """Raise FloatingPointError, before a save, when any parameter holds NaN or inf.

    Args:
        what: where ("at step S"), for the message.
        last_good: the last good checkpoint, named in the message when known.
    """
    # One device-to-host sync for all parameters, not one per tensor.
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        bad = sum(1 for p in model.parameters() if not torch.isfinite(p).all())
        kept = f"the last good checkpoint is {last_good}" if last_good else "the files saved before are untouched"
        raise NonFiniteParameters(f"parameters are not finite {what} ({bad} tensors); not saving; {kept}")


def save_training_state(path: str, env: DistEnv, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler], step: int, steps_per_epoch: int,
                        config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> None:
    """A resumable checkpoint (called on every rank: RNG states are gathered; rank 0 writes).

    Args:
        model: the unwrapped model (plain state-dict names, no "module." / "_orig_mod.").
        extra: further plain entries, e.g. {"model_ema": ...}.
    """
    check_finite(model, f"at step {step}")
    rngs = gather_rng_states(env)
    if env.is_main:
        save_checkpoint(path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "epoch": step // steps_per_epoch, "step": step,
            "steps_per_epoch": steps_per_epoch, "rng": rngs, "config": json.loads(json.dumps(config)),
            **(extra or {})})
    barrier()


def load_training_state(resume: str, auto_resume: bool, output_dir: str, *, model: nn.Module,
                        optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler]) -> Optional[Tuple[str, Dict[str, Any]]]:
    """Restore model, optimizer and scaler from `resume`, else (with `auto_resume`) from the newest
    valid checkpoint in `output_dir`. Returns (path, state), or None for a fresh run.

    With several processes rank 0 chooses the file and every rank loads that one (a rank with a
    stale view of a shared filesystem must not pick another); a rank that cannot read it, or reads
    another step, stops every rank (CheckpointError, SystemExit) with the reason.
    """
    found = find_resume_checkpoint(output_dir) if not resume and auto_resume and is_main_process() else None
    path = broadcast_object(resume or (found[0] if found else None))
    if path is None:
        return None
    state, error = (found[1], None) if found and found[0] == path else _try_load(path)
    reasons = gather_objects(error.reason if error else None)
    if error is not None:
        raise error  # this rank's own reason; the others raise theirs or name this one
    if any(reasons):
        raise CheckpointError(path, "; ".join(f"rank {r}: {why}" for r, why in enumerate(reasons) if why))
    steps = gather_objects(state["step"])
    if len(set(steps)) > 1:
        raise SystemExit(f"{path} holds steps {steps} on ranks 0..{len(steps) - 1}: the ranks see different "
                         f"versions of the file (a stale shared-filesystem cache?)")
    if "optimizer" not in state:
        raise SystemExit(f"{path} holds weights only (no optimizer state): start from it with --finetune, "
                         f"not --resume")
    load_model_state(model, state, path)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return path, state


def _try_load(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[CheckpointError]]:
    """(state, None) or (None, why it cannot be loaded)."""
    try:
        return load_checkpoint(path), None
    except CheckpointError as e:
        return None, e


# Flags that decide which samples a step of an epoch sees, or how many steps an epoch has: a
# resume that changes one cannot continue inside the saved epoch.
ORDER_FLAGS = ("batch_size", "accum_iter", "world_size", "num_sample", "seed")


def changed_flags(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """'name: saved -> current' for every config entry that differs (a key missing on one side
    counts as different)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))  # tuples as lists

    def shown(config: Dict[str, Any], key: str) -> str:
        return repr(config[key]) if key in config else "(absent)"

    return [f"{k}: {shown(saved, k)} -> {shown(current, k)}" for k in sorted(set(saved) | set(current))
            if k not in saved or k not in current or saved[k] != current[k]]


def _restart_reason(state: Dict[str, Any], steps_per_epoch: int, config: Optional[Dict[str, Any]]) -> str:
    """Why a resume of `state` must restart at an epoch boundary ('' when it can continue in place)."""
    saved = state.get("steps_per_epoch", steps_per_epoch)
    if saved != steps_per_epoch:
        return f"was written with {saved} steps per epoch, this run has {steps_per_epoch}"
    old = state.get("config") or {}
    changed = [k for k in ORDER_FLAGS if config is not None and k in old and k in config and old[k] != config[k]]
    if changed and state["step"] % saved:
        return f"was written mid-epoch with other {', '.join(changed)}"
    return ""


def resume_position(state: Dict[str, Any], path: str, steps_per_epoch: int,
                    config: Optional[Dict[str, Any]] = None) -> Tuple[int, int, int]:
    """(start epoch, global step, steps already done in that epoch) of a loaded checkpoint.

    A checkpoint of another step arithmetic or data order (`ORDER_FLAGS` of `config` against its
    own) restarts at the next epoch boundary, at that epoch's step in this run's arithmetic."""
    step = state["step"]
    start_epoch, start_in_epoch = divmod(step, steps_per_epoch)
    why = _restart_reason(state, steps_per_epoch, config)
    if why:
        saved = state.get("steps_per_epoch", steps_per_epoch)
        start_epoch, start_in_epoch = -(-step // saved), 0
        step = start_epoch * steps_per_epoch
        logger.warning("%s %s: restarting at the beginning of epoch %d (training step %d); the earlier logs are "
                       "kept and the new steps numbered after them", path, why, start_epoch, step)
    return start_epoch, step, start_in_epoch


def resume_log_offset(state: Dict[str, Any], steps_per_epoch: int, config: Optional[Dict[str, Any]] = None) -> int:
    """The log step offset after resuming from `state`: its own, plus whatever a restart at an epoch
    boundary in another arithmetic takes off the step count, so that logged steps never repeat."""
    offset = int(state.get("log_step_offset", 0))
    if not _restart_reason(state, steps_per_epoch, config):
        return offset
    saved = state.get("steps_per_epoch", steps_per_epoch)
    return offset + state["step"] - (-(-state["step"] // saved)) * steps_per_epoch


def resume_from(state: Dict[str, Any], path: str, steps_per_epoch: int, env: DistEnv,
                config: Optional[Dict[str, Any]] = None) -> Tuple[int, int, int]:
    """Restore this rank's RNG state from a loaded checkpoint; return its `resume_position`."""
    position = resume_position(state, path, steps_per_epoch, config)
    rngs = state.get("rng") or []
    if rngs:
        set_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
    logger.info("resumed from %s at epoch %d, step %d", path, position[0], position[1])
    return position
