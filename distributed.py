"""Process-group setup and the few collectives the run scripts need.

One code path for 1 and N processes: `setup_distributed` reads torchrun's environment first,
Slurm's (srun) second, and otherwise runs as a single process without any process group. Every
collective below is a no-op when no group is initialised.
"""
import datetime
import logging
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# The Slurm fallback port range: the port is a function of the job id so that every task derives
# the same one without talking to the others, and two jobs sharing a node rarely collide.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 10000

# Collective timeout. One rank that fails alone leaves the others waiting in their next collective
# until this expires (NCCL then aborts them); 30 minutes (torch's default) wastes a cluster half-hour.
# It must still cover the longest rank-0-only work between two collectives (a checkpoint write).
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "SIGMA_DIST_TIMEOUT", 600
RESOLVE_TIMEOUT_S = 10  # a master address that does not resolve within this is a configuration error

_HOST_GROUP: Optional[dist.ProcessGroup] = None  # see host_group()

# One hostlist entry: plain characters and bracketed ranges, up to the first top-level comma.
_HOSTLIST_ENTRY = re.compile(r"(?:[^,\[\]]+|\[[^\[\]]+\])+")
_BRACKET = re.compile(r"\[([^\[\]]+)\]")


@dataclass
class DistEnv:
    """Where this process sits: global rank, number of processes, rank on its node, device."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    description: str = ""  # how the process was launched, for the run's log

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Launch:
    """What the environment says about how this process was started (read, nothing done yet)."""
    source: str  # "torchrun", "slurm" or "single"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    variables: Dict[str, str] = field(default_factory=dict)  # the raw variables it was read from

    def describe(self) -> str:
        text = f"{self.source} environment ({_format(self.variables)}) -> rank {self.rank} of {self.world_size}"
        if self.master_addr is not None:
            text += f", master {self.master_addr}:{self.master_port}"
        return text


def _format(variables: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in variables.items()) or "no launcher variables"


def first_host(nodelist: str) -> str:
    """First host of a Slurm hostlist, expanded without calling scontrol.

    "node01" -> "node01", "gpu[001-004,007]" -> "gpu001", "a[1-2],b3" -> "a1",
    "n[01-02]-ib" -> "n01-ib". Zero padding survives because a range's first bound is copied
    verbatim.
    """
    text = nodelist.strip()
    entry = _HOSTLIST_ENTRY.match(text)
    if entry is None or (entry.end() < len(text) and text[entry.end()] != ","):
        raise ValueError(f"cannot parse Slurm nodelist {nodelist!r}")
    return _BRACKET.sub(lambda m: re.split(r"[,-]", m.group(1))[0], entry.group(0))


def slurm_port(job_id: str) -> int:
    """A port in [20000, 29999] that every task of Slurm job `job_id` derives identically."""
    return SLURM_PORT_BASE + int(job_id) % SLURM_PORT_SPAN


def _int(env: Mapping[str, str], name: str, source: str, variables: Mapping[str, str]) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise RuntimeError(f"{source} environment detected ({_format(variables)}) but {name} is "
                           f"missing or not an integer") from None


def _torchrun_launch(env: Mapping[str, str]) -> Launch:
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    variables = {k: env[k] for k in names if k in env}
    rank, world_size = _int(env, "RANK", "torchrun", variables), _int(env, "WORLD_SIZE", "torchrun", variables)
    local_rank = _int(env, "LOCAL_RANK", "torchrun", variables) if world_size > 1 or "LOCAL_RANK" in env else 0
    if world_size == 1:
        return Launch("torchrun", rank, world_size, local_rank, variables=variables)
    if "MASTER_ADDR" not in env:
        raise RuntimeError(f"torchrun environment detected ({_format(variables)}) but MASTER_ADDR is not set")
    return Launch("torchrun", rank, world_size, local_rank, env["MASTER_ADDR"],
                  _int(env, "MASTER_PORT", "torchrun", variables), variables)


def _slurm_launch(env: Mapping[str, str]) -> Launch:
    names = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
             "SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT")
    variables = {k: env[k] for k in names if k in env}
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    try:
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        elif nodelist:
            addr = first_host(nodelist)
        else:
            raise ValueError("neither MASTER_ADDR nor SLURM_JOB_NODELIST/SLURM_NODELIST is set")
        if "MASTER_PORT" in env:
            port = int(env["MASTER_PORT"])
        elif "SLURM_JOB_ID" in env:
            port = slurm_port(env["SLURM_JOB_ID"])
        else:
            raise ValueError("neither MASTER_PORT nor SLURM_JOB_ID is set to choose the rendezvous port")
    except ValueError as e:
        raise RuntimeError(f"slurm environment detected ({_format(variables)}) but {e}") from e
    return Launch("slurm", _int(env, "SLURM_PROCID", "slurm", variables),
                  _int(env, "SLURM_NTASKS", "slurm", variables),
                  _int(env, "SLURM_LOCALID", "slurm", variables), addr, port, variables)


def detect_launch(env: Mapping[str, str]) -> Launch:
    """Read the launcher's variables from `env` (normally os.environ); raises on inconsistent ones.

    torchrun first: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. Slurm second, and only
    when srun started the task (SLURM_PROCID present) and SLURM_NTASKS > 1, so that a single-task
    sbatch script runs as one process; the master is MASTER_ADDR if set, else the first host of
    SLURM_JOB_NODELIST (or SLURM_NODELIST), the port MASTER_PORT if set, else one derived from
    SLURM_JOB_ID. Otherwise a single process. A world size of 1 needs no process group.
    """
    slurm_tasks = env.get("SLURM_NTASKS", "1")
    if "RANK" in env or "WORLD_SIZE" in env:
        launch = _torchrun_launch(env)
    elif "SLURM_PROCID" in env and slurm_tasks.isdigit() and int(slurm_tasks) > 1:
        launch = _slurm_launch(env)
    else:
        return Launch("single")
    if not (0 <= launch.rank < launch.world_size and launch.local_rank >= 0):
        raise RuntimeError(f"{launch.describe()}: the rank must lie in [0, world size) and the local rank be >= 0")
    return launch


def _cuda_index(local_rank: int) -> int:
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available "
                           "(no GPU visible or a CPU-only torch build); pass --device cpu to run on the CPU")
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    # With one GPU bound to each task (srun --gpus-per-task=1) every task sees its own GPU as
    # cuda:0 whatever its local rank; several visible but too few is a misconfiguration.
    if count == 1:
        return 0
    raise RuntimeError(f"local rank {local_rank} but only {count} GPUs are visible "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")


def dist_timeout_s(env: Mapping[str, str]) -> int:
    """The collective timeout in seconds: $SIGMA_DIST_TIMEOUT if set, else DEFAULT_TIMEOUT_S."""
    text = env.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    if not text.isdigit() or int(text) == 0:
        raise RuntimeError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return int(text)


def _resolve_error(addr: str, port: int, timeout_s: float) -> Optional[str]:
    """Why `addr` does not resolve, or None. The lookup runs in a thread so that a resolver that
    never answers cannot hang us."""
    result: Dict[str, Any] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
            result["ok"] = True
        except OSError as e:  # socket.gaierror is an OSError
            result["error"] = e

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if result.get("ok"):
        return None
    return (f"{type(result['error']).__name__}: {result['error']}" if "error" in result
            else f"no answer from the resolver within {timeout_s:g}s")


def check_master_resolves(launch: Launch, timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
    """Raise at once when the rendezvous host does not resolve.

    c10d retries a failed name lookup ("gai error -2") until the whole rendezvous timeout has
    passed; a typo in MASTER_ADDR or a nodelist host that is not in DNS would otherwise hang for
    minutes.
    """
    why = _resolve_error(launch.master_addr, launch.master_port, timeout_s)
    if why is None:
        return
    raise RuntimeError(f"distributed setup failed for the {launch.describe()}: the master address "
                       f"{launch.master_addr!r} does not resolve ({why}); set MASTER_ADDR to a host name or IP "
                       f"address that every node can reach")


def rendezvous_problem(addr: str, port: str, node_rank: int, timeout_s: float = RESOLVE_TIMEOUT_S) -> str:
    """What is wrong with a multi-node torchrun rendezvous address, checked before torchrun starts
    ('' if nothing): torchrun's own rendezvous retries a name that does not resolve for its whole
    timeout (minutes of c10d "gai error" warnings) before the driver's own check could run.

    Args:
        port: MASTER_PORT as given (text).
        node_rank: on node 0 the port must also be free to listen on (torchrun's store binds it).
    """
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"MASTER_PORT={port!r} is not a TCP port (1-65535)"
    why = _resolve_error(addr, int(port), timeout_s)
    if why is not None:
        return (f"MASTER_ADDR {addr!r} does not resolve ({why}); set it to a host name or IP address of node 0 "
                f"that every node can reach")
    if node_rank == 0:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", int(port)))
            except OSError as e:
                return (f"MASTER_PORT {port} cannot be listened on by node 0 ({e.strerror}); another job may hold "
                        f"it: choose another MASTER_PORT")
    return ""


def setup_distributed(device: str = "cuda", backend: Optional[str] = None,
                      timeout_s: Optional[int] = None) -> DistEnv:
    """Initialise the default process group from the launcher's environment, if any.

    Args:
        device: "cuda" or "cpu"; on CUDA each process takes cuda:<local rank>.
        backend: process-group backend; default nccl for cuda, gloo otherwise.
        timeout_s: rendezvous and collective timeout in seconds (default: `dist_timeout_s`).
    Returns:
        The process's DistEnv. With one process no group is created and collectives are no-ops.
    Raises:
        RuntimeError: CUDA requested but unavailable, inconsistent launcher variables, or a
            rendezvous that failed; the message names the environment and variables used.
    """
    global _HOST_GROUP
    launch = detect_launch(os.environ)
    timeout_s = dist_timeout_s(os.environ) if timeout_s is None else timeout_s
    device_type = torch.device(device).type
    if device_type == "cuda":
        index = _cuda_index(launch.local_rank)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device(device_type)
    if launch.world_size > 1:
        backend = backend or ("nccl" if device_type == "cuda" else "gloo")
        # init_method="env://" reads the rendezvous address from the environment, which the Slurm
        # path has only derived so far.
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = launch.master_addr, str(launch.master_port)
        check_master_resolves(launch)
        try:
            dist.init_process_group(backend=backend, init_method="env://", rank=launch.rank,
                                    world_size=launch.world_size, timeout=datetime.timedelta(seconds=timeout_s),
                                    device_id=dev if device_type == "cuda" else None)
        except Exception as e:
            # A multi-task sbatch script that runs python without srun also has SLURM_PROCID=0.
            hint = "; was every task started by srun?" if launch.source == "slurm" else ""
            raise RuntimeError(f"distributed setup failed for the {launch.describe()}, backend {backend}, "
                               f"timeout {timeout_s}s: {type(e).__name__}: {e}{hint}") from e
        # Stop/skip flags live on the host; a gloo group agrees on them without a device sync.
        _HOST_GROUP = (dist.group.WORLD if backend == "gloo"
                       else dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)))
        # Libraries that read the launcher's variables themselves (DeepSpeed) see the same layout.
        os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size),
                          LOCAL_RANK=str(launch.local_rank))
    description = f"{launch.describe()}, device {dev}" + (f", timeout {timeout_s}s" if launch.world_size > 1 else "")
    logger.info("%s", description)
    return DistEnv(rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank, device=dev,
                   description=description)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def cleanup_distributed() -> None:
    global _HOST_GROUP
    if is_distributed():
        dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()
    _HOST_GROUP = None


def wrap_ddp(module: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """`module` in DistributedDataParallel on this process's device.

    Buffers are re-broadcast from rank 0 before every forward only where some change in training
    (BatchNorm running statistics); the sin-cos position tables are constant and identical on
    every rank, and broadcasting them would cost a collective per step.
    """
    changing = any(isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats
                   for m in module.modules())
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[env.device.index] if env.device.type == "cuda" else None, broadcast_buffers=changing)


def is_main_process() -> bool:
    """Rank 0 of the default group, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def host_group() -> Optional[dist.ProcessGroup]:
    """The gloo group for host-side flags (the default group itself under gloo); None alone."""
    return _HOST_GROUP if is_distributed() else None


def ranks_with(flag: bool) -> List[int]:
    """The ranks on which `flag` is set: a collective over the host group, no device sync.

    Every decision to stop or to skip a step goes through this (or `any_rank`), so that all ranks
    take it together: a rank that stops or skips alone leaves the others waiting in a collective.
    """
    group = host_group()
    if group is None:
        return [0] if flag else []
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32)
    flags[dist.get_rank()] = int(flag)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM, group=group)
    return flags.nonzero().flatten().tolist()


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank (a collective over the host group)."""
    return bool(ranks_with(flag))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a floating tensor over all ranks, as a new tensor; `t` itself when single process.

    The tensor must live where the backend communicates (CUDA for nccl).
    """
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.div_(dist.get_world_size())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (picklable objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's `obj` (picklable), in rank order, over the host group; [obj] alone."""
    group = host_group()
    if group is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=group)
    return out


def setup_logging(rank: int, log_file: Optional[str] = None) -> None:
    """Configure the root logger: INFO on rank 0, WARNING elsewhere.

    Call after `setup_distributed`: the rank enters the format when the group has more than one
    process. Rank 0 also appends to `log_file` when given. Handlers from an earlier call are
    replaced (no duplicated lines); handlers installed by others (e.g. pytest's) are kept.
    """
    world_size = dist.get_world_size() if is_distributed() else 1
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_sigma", False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    formatter = logging.Formatter(prefix + "%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler._sigma = True  # marks our handlers for the next call
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
