"""Distributed setup (single process, torchrun, Slurm, failures), AdamW groups and schedules."""
import logging
import math
import os
import socket
import time
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from distributed import (all_reduce_mean, barrier, broadcast_object, cleanup_distributed, detect_launch, first_host,
                         is_distributed, setup_distributed, setup_logging, slurm_port)
from optim_factory import create_optimizer, param_groups
from schedules import cosine_schedule, warmup_steps_from

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID",
               "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")
SPAWN_TIMEOUT_S = 60.0  # generous for two cold torch imports on 2 cores; a hang fails the test


# ---------------------------------------------------------------- helpers for spawned processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_launch_env() -> None:
    for name in LAUNCH_VARS:
        os.environ.pop(name, None)


def _run_spawned(fn, args: tuple, nprocs: int) -> None:
    """Run fn(index, *args) in `nprocs` fresh processes; a child's exception or a hang fails."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"spawned processes did not finish within {SPAWN_TIMEOUT_S}s")


def _check_group(index: int) -> None:
    env = setup_distributed(device="cpu", timeout_s=30)
    assert (env.rank, env.world_size, env.local_rank) == (index, 2, index)
    assert env.device == torch.device("cpu") and env.is_main == (index == 0)
    assert is_distributed() and dist.get_backend() == "gloo"
    t = torch.tensor([float(index + 1), 10.0 * index])
    mean = all_reduce_mean(t)
    assert torch.equal(mean, torch.tensor([1.5, 5.0])), mean
    assert torch.equal(t, torch.tensor([float(index + 1), 10.0 * index])), "input must not be modified"
    assert broadcast_object({"from": index}) == {"from": 0}
    setup_logging(env.rank)
    assert f"[rank {index}]" in logging.getLogger().handlers[0].formatter._fmt
    barrier()
    cleanup_distributed()
    assert not is_distributed()


def _torchrun_worker(index: int, port: int) -> None:
    _clear_launch_env()
    os.environ.update(RANK=str(index), WORLD_SIZE="2", LOCAL_RANK=str(index), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _check_group(index)


def _slurm_worker(index: int, port: int) -> None:
    _clear_launch_env()
    # No MASTER_ADDR: it must come from the nodelist.
    os.environ.update(SLURM_PROCID=str(index), SLURM_LOCALID=str(index), SLURM_NTASKS="2",
                      SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242", MASTER_PORT=str(port))
    _check_group(index)
    assert os.environ["MASTER_ADDR"] == "localhost"


def _unreachable_worker(index: int, port: int) -> None:
    _clear_launch_env()
    # Rank 1 of 2 with nobody listening on the master port: the rendezvous must time out.
    os.environ.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        setup_distributed(device="cpu", timeout_s=2)
    message = str(err.value)
    assert "torchrun" in message and "WORLD_SIZE=2" in message and f"MASTER_PORT={port}" in message, message
    assert time.monotonic() - start < 20
    assert not is_distributed()


# ---------------------------------------------------------------- distributed

@pytest.mark.parametrize("nodelist, host", [
    ("node01", "node01"), ("gpu[001-004,007]", "gpu001"), ("a[1-2],b3", "a1"), ("n[01-02]-ib", "n01-ib"),
    ("b3,a[1-2]", "b3"), ("gpu[7,1-3]", "gpu7"), ("rack[2-3]-n[08-09]", "rack2-n08"), ("localhost", "localhost")])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "a[1-2", "a]b", "a[]"])
def test_first_host_rejects_malformed(nodelist):
    with pytest.raises(ValueError):
        first_host(nodelist)


def test_slurm_port_deterministic_in_range():
    ports = {slurm_port(str(job)) for job in (0, 1, 9999, 10000, 123456789)}
    assert all(20000 <= p <= 29999 for p in ports) and len(ports) == 4  # 0 and 10000 share a port
    assert slurm_port("123456") == slurm_port("123456") == 23456


@pytest.fixture
def no_launch_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_group(no_launch_env):
    env = setup_distributed(device="cpu")
    assert (env.rank, env.world_size, env.local_rank, env.device) == (0, 1, 0, torch.device("cpu"))
    assert env.is_main and not dist.is_initialized() and not is_distributed()
    t = torch.ones(3)
    assert all_reduce_mean(t) is t and broadcast_object([1]) == [1]
    barrier()
    cleanup_distributed()


def test_single_task_sbatch_is_single_process(no_launch_env):
    # sbatch gives the batch script SLURM_PROCID=0 too; one task must not start a group.
    no_launch_env.setenv("SLURM_PROCID", "0")
    no_launch_env.setenv("SLURM_NTASKS", "1")
    no_launch_env.setenv("SLURM_JOB_NODELIST", "node01")
    env = setup_distributed(device="cpu")
    assert env.world_size == 1 and not dist.is_initialized()


def test_detect_launch_sources():
    assert detect_launch({}).source == "single"
    assert detect_launch({"SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"}).source == "single"  # salloc, no srun
    torchrun = detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                              "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"})
    assert (torchrun.source, torchrun.rank, torchrun.world_size, torchrun.local_rank) == ("torchrun", 3, 4, 1)
    slurm = detect_launch({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
                           "SLURM_JOB_NODELIST": "gpu[003-006]", "SLURM_JOB_ID": "777"})
    assert (slurm.source, slurm.rank, slurm.world_size, slurm.local_rank) == ("slurm", 5, 8, 1)
    assert (slurm.master_addr, slurm.master_port) == ("gpu003", 20777)
    fallback = detect_launch({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
                              "SLURM_NODELIST": "x[1-2]", "MASTER_PORT": "3000"})
    assert (fallback.master_addr, fallback.master_port) == ("x1", 3000)


@pytest.mark.parametrize("env, words", [
    ({"RANK": "0"}, ["torchrun", "RANK=0", "WORLD_SIZE"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_PORT": "1"}, ["torchrun", "MASTER_ADDR"]),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ["rank 2 of 2"]),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "1"},
     ["slurm", "SLURM_NTASKS=2", "NODELIST"]),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n1"},
     ["slurm", "SLURM_JOB_ID"]),
])
def test_detect_launch_inconsistent_env_raises(env, words):
    with pytest.raises(RuntimeError) as err:
        detect_launch(env)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_setup_rank_without_world_size_raises(no_launch_env):
    no_launch_env.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        setup_distributed(device="cpu")
    assert not dist.is_initialized()


def test_cuda_requested_but_unavailable(no_launch_env):
    no_launch_env.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        setup_distributed(device="cuda")


@pytest.mark.slow
def test_torchrun_env_two_processes():
    _run_spawned(_torchrun_worker, (_free_port(),), nprocs=2)


@pytest.mark.slow
def test_slurm_env_two_processes():
    _run_spawned(_slurm_worker, (_free_port(),), nprocs=2)


@pytest.mark.slow
def test_unreachable_master_raises_quickly():
    _run_spawned(_unreachable_worker, (_free_port(),), nprocs=1)


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    # Our own handlers of an earlier run are closed by the setup_logging calls below: not restored
    # (a closed FileHandler reopens its file on the next record, whose folder may be gone).
    handlers, level = [h for h in root.handlers if not getattr(h, "_sigma", False)], root.level
    yield root
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:], root.level = handlers, level


def test_setup_logging_levels_and_file(tmp_path, root_logger_restored):
    log_file = tmp_path / "logs" / "train.log"
    setup_logging(0, str(log_file))
    logging.getLogger("sigma").info("first")
    setup_logging(0, str(log_file))  # a second call (e.g. after a restart) appends, no duplicates
    logging.getLogger("sigma").info("second")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2 and "first" in lines[0] and "second" in lines[1] and "rank" not in lines[0]
    setup_logging(1, str(tmp_path / "rank1.log"))
    assert root_logger_restored.level == logging.WARNING
    assert not (tmp_path / "rank1.log").exists()
    assert not any(isinstance(h, logging.FileHandler) and getattr(h, "_sigma", False)
                   for h in root_logger_restored.handlers)


# ---------------------------------------------------------------- optimizer groups

class TinyViT(nn.Module):
    """The VideoMAE fine-tuning parameter names, tiny."""

    def __init__(self, depth: int = 4, dim: int = 8):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, dim, kernel_size=2, stride=2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)
        self.frozen = nn.Linear(dim, dim).requires_grad_(False)

    def no_weight_decay(self) -> set:
        return {"pos_embed"}


def _by_param(groups: List[dict]) -> Dict[int, dict]:
    return {id(p): g for g in groups for p in g["params"]}


def test_param_groups_decay_split():
    model = TinyViT()
    groups = param_groups(model, weight_decay=0.05, no_weight_decay_names=("mask_token",))
    assert {g["group_name"] for g in groups} == {"decay", "no_decay"}
    assert all(set(g) == {"params", "weight_decay", "lr_scale", "group_name"} and g["lr_scale"] == 1.0 for g in groups)
    owners = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(owners) == sorted(trainable)  # every trainable param in exactly one group, frozen ones in none
    group_of = _by_param(groups)
    decayed = {n for n, p in model.named_parameters() if p.requires_grad and group_of[id(p)]["weight_decay"] > 0}
    assert decayed == {"patch_embed.proj.weight", "head.weight"} | {f"blocks.{i}.1.weight" for i in range(4)}
    assert all(group_of[id(p)]["weight_decay"] == 0.0 for n, p in model.named_parameters()
               if p.requires_grad and n not in decayed)


def test_no_weight_decay_names_match_whole_components():
    outer = nn.Module()
    outer.encoder = TinyViT()
    outer.my_pos_embed = nn.Parameter(torch.zeros(2, 2))  # not "pos_embed": a different name
    group_of = _by_param(param_groups(outer, weight_decay=0.1, no_weight_decay_names=("pos_embed",)))
    assert group_of[id(outer.encoder.pos_embed)]["weight_decay"] == 0.0
    assert group_of[id(outer.my_pos_embed)]["weight_decay"] == 0.1


def test_layer_decay_scales():
    model = TinyViT(depth=4)
    decay = 0.5
    groups = param_groups(model, weight_decay=0.05, layer_decay=decay, num_layers=4)
    group_of = _by_param(groups)
    scale = {n: group_of[id(p)]["lr_scale"] for n, p in model.named_parameters() if p.requires_grad}
    assert scale["patch_embed.proj.weight"] == scale["pos_embed"] == scale["mask_token"] == decay ** 5
    for i in range(4):
        assert scale[f"blocks.{i}.1.weight"] == scale[f"blocks.{i}.0.bias"] == decay ** (4 - i)
    assert scale["head.weight"] == scale["fc_norm.weight"] == 1.0
    assert min(scale.values()) == scale["patch_embed.proj.bias"] and max(scale.values()) == 1.0
    assert group_of[id(model.blocks[2][1].weight)]["group_name"] == "layer_3_decay"
    assert group_of[id(model.blocks[2][1].bias)]["group_name"] == "layer_3_no_decay"
    inferred = param_groups(model, weight_decay=0.05, layer_decay=decay)
    assert [(g["group_name"], g["lr_scale"]) for g in inferred] == [(g["group_name"], g["lr_scale"]) for g in groups]


def test_layer_decay_under_encoder_prefix():
    outer = nn.Module()
    outer.encoder = TinyViT(depth=2)
    group_of = _by_param(param_groups(outer, weight_decay=0.0, layer_decay=0.75))
    assert group_of[id(outer.encoder.blocks[1][1].weight)]["lr_scale"] == 0.75
    assert group_of[id(outer.encoder.patch_embed.proj.weight)]["lr_scale"] == 0.75 ** 3


def test_layer_decay_without_blocks_needs_num_layers():
    with pytest.raises(ValueError, match="num_layers"):
        param_groups(nn.Linear(2, 2), weight_decay=0.05, layer_decay=0.75)


def test_create_optimizer_applies_decay_only_to_decay_groups():
    model = TinyViT()
    groups = param_groups(model, weight_decay=0.1, layer_decay=0.5, num_layers=4)
    opt = create_optimizer(groups, lr=0.1, betas=(0.9, 0.95), eps=1e-8, fused=True)  # CPU: torch's fused kernel
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert all(g["lr"] == pytest.approx(0.1 * g["lr_scale"]) for g in opt.param_groups)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()  # zero gradient: AdamW moves only through decoupled decay, p *= 1 - lr * wd
    for g in opt.param_groups:
        expected = 1.0 - g["lr"] * g["weight_decay"]
        assert all(torch.allclose(p, torch.full_like(p, expected)) for p in g["params"]), g["group_name"]
    assert torch.equal(model.frozen.weight, torch.ones_like(model.frozen.weight))


# ---------------------------------------------------------------- schedules

def official_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                              start_warmup_value=0, warmup_steps=-1):
    """The array formula of utils.cosine_scheduler in MCG-NJU/VideoMAE and QUVA-Lab/SIGMA."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / len(iters)))
                         for i in iters])
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


@pytest.mark.parametrize("base, final, epochs, niter, warmup_epochs, start, warmup_steps", [
    (1.5e-4, 1e-6, 10, 7, 2, 1e-6, -1),  # lr with warmup from a nonzero start
    (1e-3, 0.0, 5, 4, 1, 0.0, 3),  # warmup_steps overrides warmup_epochs
    (0.05, 0.05, 3, 5, 0, 0.0, -1),  # constant weight decay, no warmup
    (0.04, 0.4, 4, 3, 0, 0.0, -1),  # increasing (weight-decay-end style)
    (2e-3, 1e-5, 3, 2, 1, 0.0, 1),  # one warmup step: linspace(start, base, 1) == [start]
])
def test_cosine_matches_official_array(base, final, epochs, niter, warmup_epochs, start, warmup_steps):
    expected = official_cosine_scheduler(base, final, epochs, niter, warmup_epochs, start, warmup_steps)
    total = epochs * niter
    warmup = warmup_steps_from(warmup_epochs, warmup_steps, niter)
    got = [cosine_schedule(s, base, final, total, warmup_steps=warmup, warmup_start=start) for s in range(total)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    for step in (total, total + 1, 10 * total):
        assert cosine_schedule(step, base, final, total, warmup_steps=warmup, warmup_start=start) == final


def test_cosine_warmup_endpoints_and_monotone():
    total, warmup = 100, 10
    lr = [cosine_schedule(s, 1.0, 0.1, total, warmup_steps=warmup, warmup_start=0.2) for s in range(total + 3)]
    assert lr[0] == 0.2 and lr[warmup - 1] == pytest.approx(1.0) and lr[warmup] == 1.0
    assert all(a < b for a, b in zip(lr[:warmup - 1], lr[1:warmup]))
    assert all(a > b for a, b in zip(lr[warmup:total], lr[warmup + 1:total]))
    assert 0.1 < lr[total - 1] < 0.1 + 1e-3 and lr[total:] == [0.1] * 3
    assert cosine_schedule(0, 1.0, 0.1, total) == 1.0  # no warmup: starts at base


@pytest.mark.parametrize("step, total, warmup", [(-1, 10, 0), (0, 0, 0), (0, 10, 11), (0, 10, -1)])
def test_cosine_rejects_bad_arguments(step, total, warmup):
    with pytest.raises(ValueError):
        cosine_schedule(step, 1.0, 0.0, total, warmup_steps=warmup)


def test_warmup_steps_from():
    assert warmup_steps_from(warmup_epochs=5, warmup_steps=-1, steps_per_epoch=10) == 50
    assert warmup_steps_from(warmup_epochs=5, warmup_steps=0, steps_per_epoch=10) == 50
    assert warmup_steps_from(warmup_epochs=5, warmup_steps=7, steps_per_epoch=10) == 7
    assert warmup_steps_from(warmup_epochs=0, warmup_steps=-1, steps_per_epoch=10) == 0
