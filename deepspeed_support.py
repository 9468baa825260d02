"""DeepSpeed for fine-tuning (--enable_deepspeed): engine set-up, and its checkpoints for resume.

DeepSpeed is optional (requirements-deepspeed.txt); it is imported only here and only when asked
for. The engine wraps our own AdamW, so the layer-decay parameter groups and their lr_scale stay
intact; clipping, loss scaling and ZeRO stage 0/1/2 partitioning come from its config. Resume
state lives in DeepSpeed's own checkpoint folders (ZeRO partitions the optimizer state), one tag
per save, ``deepspeed/step-{N}``; the plain ``checkpoint-*.pth`` weights files stay loadable
without DeepSpeed.
"""
import argparse
import logging
import os
import re
import shutil
import socket
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from distributed import DistEnv, barrier

logger = logging.getLogger("sigma")

DS_DIR = "deepspeed"
_TAG = re.compile(r"step-(\d+)")


def import_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise SystemExit("--enable_deepspeed needs the deepspeed package: pip install -r requirements-deepspeed.txt "
                         "(see INSTALL.md), or drop the flag") from None
    return deepspeed


def deepspeed_config(*, batch_size: int, update_freq: int, world_size: int, zero_stage: int, precision: str,
                     clip_grad: Optional[float]) -> Dict[str, Any]:
    """The DeepSpeed JSON config of a run (also written to output_dir/deepspeed_config.json)."""
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": update_freq,
        "train_batch_size": batch_size * update_freq * world_size,
        "gradient_clipping": clip_grad or 0.0,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10 ** 9,  # our own logging reports progress
    }


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Dict[str, Any], env: DistEnv):
    """A DeepSpeed engine around `model` and our optimizer (its param groups keep their lr_scale)."""
    deepspeed = import_deepspeed()
    if env.device.type == "cpu":
        # The shared-memory all-reduce op is compiled on first use (minutes); gloo serves instead.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if config["fp16"]["enabled"] and env.device.type != "cuda":
        raise ValueError("DeepSpeed fp16 needs CUDA; use --precision bf16 or fp32 on the CPU")
    # DeepSpeed reads the launcher variables itself; srun and a plain `python` do not set them, and
    # stale ones from an outer launcher must not win over the layout setup_distributed found.
    os.environ.update(LOCAL_RANK=str(env.local_rank), RANK=str(env.rank), WORLD_SIZE=str(env.world_size))
    if not dist.is_initialized():  # a single process: DeepSpeed still wants a process group
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        _forget_stale_deepspeed_groups()
    # DeepSpeed calls set_device(LOCAL_RANK) unless told the device: with one GPU bound to each task
    # (srun --gpus-per-task=1) every task but the node's first would ask for an ordinal it cannot see.
    engine, _, _, _ = deepspeed.initialize(args=argparse.Namespace(device_rank=device_rank(env)), model=model,
                                           optimizer=optimizer, config=config)
    return engine


def _forget_stale_deepspeed_groups() -> None:
    """DeepSpeed caches its world group at module level; after an earlier engine's process group was
    destroyed in this same process (in-process tests run several), that cache names a group torch
    no longer knows ("Group ... is not registered"). A fresh process group starts fresh caches."""
    from deepspeed.utils import groups

    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP"):
        if hasattr(groups, name):
            setattr(groups, name, None)


def device_rank(env: DistEnv) -> int:
    """The device ordinal DeepSpeed must use: the one setup_distributed chose (0 off CUDA, where
    DeepSpeed's CPU accelerator ignores it)."""
    return env.device.index if env.device.type == "cuda" else 0


def master_state_dict(engine) -> Dict[str, torch.Tensor]:
    """The module's state dict with every parameter taken from the optimizer's fp32 master copy.

    Under bf16/fp16 the module holds only the rounded weights the optimizer writes back after each
    step; a plain checkpoint-*.pth (fine-tuning further, evaluation) wants the fp32 masters. ZeRO
    1/2 partition the masters: gathering them is a collective, so every rank calls this.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    masters = _unpartitioned_masters(engine.optimizer)
    state = engine.module.state_dict()
    for name, param in engine.module.named_parameters():
        master = safe_get_full_fp32_param(param)  # ZeRO 1/2/3; None without ZeRO
        if master is None:
            master = masters.get(id(param))
        if master is not None:
            state[name] = master.detach().reshape(param.shape)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _unpartitioned_masters(optimizer) -> Dict[int, torch.Tensor]:
    """id(low-precision param) -> its fp32 master, for DeepSpeed's ZeRO-0 fp16/bf16 optimizers
    (FP16_UnfusedOptimizer keeps fp32 copies per parameter, FP16_Optimizer one flat buffer per group)."""
    low = getattr(optimizer, "fp16_groups", None) or []
    if hasattr(optimizer, "fp32_groups_flat"):
        from torch._utils import _unflatten_dense_tensors

        high = [_unflatten_dense_tensors(flat, group) for flat, group in zip(optimizer.fp32_groups_flat, low)]
    else:
        high = getattr(optimizer, "fp32_groups", None) or []
    return {id(p): m for group, masters in zip(low, high) for p, m in zip(group, masters)}


def _tags(ds_dir: str) -> list:
    """(step, tag) of the step-N folders in `ds_dir`, newest first."""
    found = [(int(m.group(1)), name) for name in os.listdir(ds_dir) if (m := _TAG.fullmatch(name))] \
        if os.path.isdir(ds_dir) else []
    return sorted(found, reverse=True)


def save(engine, output_dir: str, env: DistEnv, client_state: Dict[str, Any], keep: int = 2) -> str:
    """Write tag step-{step} on every rank (a collective) and keep the newest `keep` tags."""
    ds_dir = os.path.join(output_dir, DS_DIR)
    tag = f"step-{client_state['step']}"
    engine.save_checkpoint(ds_dir, tag=tag, client_state=client_state)
    barrier()
    if env.is_main:
        for _, old in _tags(ds_dir)[keep:]:
            shutil.rmtree(os.path.join(ds_dir, old), ignore_errors=True)
    barrier()
    return os.path.join(ds_dir, tag)


def load(engine, path: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """Resume from a DeepSpeed folder: an output_dir (its newest tag), its deepspeed/ folder, or one
    tag folder. Returns (tag path, client state), or None when there is nothing to resume."""
    if os.path.isdir(os.path.join(path, DS_DIR)):
        path = os.path.join(path, DS_DIR)
    if _TAG.fullmatch(os.path.basename(os.path.normpath(path))):
        ds_dir, tag = os.path.split(os.path.normpath(path))
    else:
        tags = _tags(path)
        if not tags:
            return None
        ds_dir, tag = path, tags[0][1]
    loaded, client_state = engine.load_checkpoint(ds_dir, tag=tag)
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(ds_dir, tag)}")
    return os.path.join(ds_dir, tag), client_state
