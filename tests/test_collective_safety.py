"""Decisions every rank must take together, and launches that must fail fast, on two gloo processes.

A rank that skips a step, stops or resumes from another file alone leaves the others waiting in a
collective until the process-group timeout; each case here must end within seconds with the cause.
"""
import json
import os
import signal
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import distributed
from distributed import DistEnv, check_master_resolves, detect_launch, dist_timeout_s, setup_distributed

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID",
               "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")
DEADLINE_S = 60.0  # a deadlock fails the test instead of hanging it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args, nprocs: int = 2) -> None:
    """fn(index, *args) in `nprocs` fresh processes; an exception in one, or a hang, fails."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"spawned processes did not finish within {DEADLINE_S}s (deadlock?)")


def _join_group(index: int, port: int) -> DistEnv:
    """Task `index` of a simulated `srun --ntasks=2` on one node: no torchrun variables, the local
    rank from SLURM_LOCALID, the master from the nodelist."""
    for name in LAUNCH_VARS:
        os.environ.pop(name, None)
    os.environ.update(SLURM_PROCID=str(index), SLURM_LOCALID=str(index), SLURM_NTASKS="2",
                      SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return setup_distributed(device="cpu", timeout_s=30)


def _write(out_dir: str, index: int, record: dict) -> None:
    with open(os.path.join(out_dir, f"rank{index}.json"), "w") as f:
        json.dump(record, f)


def _read(out_dir, nprocs: int = 2) -> list:
    return [json.loads((out_dir / f"rank{i}.json").read_text()) for i in range(nprocs)]


# ---------------------------------------------------------------- a non-finite loss on one rank

def _nonfinite(env: DistEnv, skip: int, nan_at: int) -> dict:
    from schedules import make_schedule
    from training_loop import TorchUpdate, train_steps

    index = env.rank
    torch.manual_seed(0)
    core = nn.Linear(4, 1)
    model = nn.parallel.DistributedDataParallel(core)
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1)
    loader = [{"video": torch.randn(2, 4, generator=torch.Generator().manual_seed(10 * i + index))}
              for i in range(6)]
    calls = [0]

    def loss_fn(batch):
        loss = model(batch["video"]).pow(2).mean()
        if env.rank == 1 and calls[0] == nan_at:
            loss = loss * float("nan")
        calls[0] += 1
        return loss, {"loss": loss.detach()}

    schedule = make_schedule(micro_batches=len(loader), accum=1, batch_size=256, world_size=1, num_videos=6, lr=0.1,
                             min_lr=0.1, warmup_lr=0.1, epochs=1, warmup_epochs=0, warmup_steps=-1, weight_decay=0.0,
                             weight_decay_end=None)  # constant lr 0.1, no weight decay
    record = {}
    try:
        steps = [done.step for done in train_steps(model, loader, TorchUpdate(model, optimizer), schedule, loss_fn,
                                                   device=env.device, epoch=0, start_step=0, log_every=2,
                                                   skip_nonfinite=skip)]
        stats = {"end_step": steps[-1]}
        weights = torch.cat([p.detach().flatten() for p in core.parameters()])
        gathered = [torch.empty_like(weights) for _ in range(2)]
        dist.all_gather(gathered, weights)
        record = {"end_step": stats["end_step"], "same_weights": bool(torch.equal(*gathered)),
                  "finite": bool(torch.isfinite(weights).all())}
    except FloatingPointError as e:
        record = {"error": str(e)}
    return record


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_is_skipped_by_both(scenarios):
    ranks = scenarios["skip"]
    # 6 batches, one skipped on both ranks: 5 steps, identical finite weights.
    assert ranks[0] == ranks[1] == {"end_step": 5, "same_weights": True, "finite": True}, ranks


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_stops_both_with_the_cause(scenarios):
    # --skip_nonfinite 0 checks at log steps only (log_every 2): micro-batch 1 completes step 2.
    for record in scenarios["stop"]:
        assert "non-finite loss at step 1" in record.get("error", "") and "rank(s) [1]" in record["error"], record


# ---------------------------------------------------------------- preemption, bad samples, resume

def _preemption(env: DistEnv) -> dict:
    from runtime import Preemption

    index = env.rank
    preemption = Preemption()
    stopped_after = None
    for step in range(1, 20):
        if index == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 sees it
        if preemption.agreed(step, env):
            stopped_after = step
            break
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    return {"stopped_after": stopped_after}


@pytest.mark.slow
def test_preemption_seen_by_one_rank_stops_both_after_the_same_step(scenarios):
    assert scenarios["preemption"] == [{"stopped_after": 4}] * 2  # checked every step, decided one step later


def _bad_samples(env: DistEnv) -> dict:
    from datasets.video_dataset import BadSampleTracker

    index = env.rank
    tracker = BadSampleTracker(max_bad_fraction=0.2, epoch_size=10)
    batches = 0
    try:
        for _ in range(5):  # rank 1 has 1 bad file per batch; rank 0 none
            tracker.update({"bad": [(f"x{batches}.mp4", "missing")] if index == 1 else [], "num_items": 2})
            batches += 1
        record = {"batches": batches}
    except RuntimeError as e:
        record = {"batches": batches, "error": str(e)}
    try:
        tracker.end_epoch()
        record["end_epoch"] = "passed"
    except RuntimeError:
        record["end_epoch"] = "raised"
    return record


@pytest.mark.slow
def test_bad_samples_on_one_rank_stop_both_at_the_same_batch(scenarios):
    ranks = scenarios["bad_samples"]
    # 3 bad files > 0.2 * 10 on rank 1 at its third batch: both ranks stop there, and both fail the epoch.
    assert [r["batches"] for r in ranks] == [2, 2] and all("error" in r for r in ranks), ranks
    assert [r["end_epoch"] for r in ranks] == ["raised", "raised"]


def _resume(env: DistEnv, out_dir: str, fail_on_rank1: bool) -> dict:
    import checkpointing
    from checkpointing import CheckpointError, save_checkpoint

    index = env.rank
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Each rank's view of output_dir: rank 1's is stale (an older checkpoint only).
    mine = os.path.join(out_dir, f"view{index}")
    if index == 0 or not fail_on_rank1:
        os.makedirs(mine, exist_ok=True)
        save_checkpoint(os.path.join(mine, "checkpoint-latest.pth"),
                        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0,
                         "step": 5 if index == 0 else 3})
    dist.barrier()
    load = checkpointing.load_checkpoint
    if fail_on_rank1 and index == 1:
        def unreadable(path, required=checkpointing.REQUIRED_KEYS):
            raise CheckpointError(path, "no such file")
        checkpointing.load_checkpoint = unreadable
    try:
        path, state = checkpointing.load_training_state("", True, mine, model=model, optimizer=optimizer, scaler=None)
        record = {"path": os.path.relpath(path, out_dir), "step": state["step"]}
    except (CheckpointError, SystemExit) as e:
        record = {"error": str(e)}
    checkpointing.load_checkpoint = load
    return record


def _scenarios_worker(index: int, port: int, out_dir: str) -> None:
    """Every two-rank scenario in one process group (one spawn: two cold torch imports)."""
    env = _join_group(index, port)
    record = {"skip": _nonfinite(env, skip=1, nan_at=2), "stop": _nonfinite(env, skip=0, nan_at=1),
              "preemption": _preemption(env), "bad_samples": _bad_samples(env),
              "resume": _resume(env, os.path.join(out_dir, "a"), fail_on_rank1=False),
              "resume_unreadable": _resume(env, os.path.join(out_dir, "b"), fail_on_rank1=True)}
    try:
        import deepspeed  # noqa: F401  (optional)
        record["deepspeed"] = _deepspeed_under_srun(env)
    except ImportError:
        record["deepspeed"] = None
    _write(out_dir, index, record)
    distributed.cleanup_distributed()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """{scenario: [rank 0's record, rank 1's record]}."""
    out_dir = tmp_path_factory.mktemp("collective")
    _spawn(_scenarios_worker, _free_port(), str(out_dir))
    ranks = _read(out_dir)
    return {name: [r[name] for r in ranks] for name in ranks[0]}


@pytest.mark.slow
def test_rank0_chooses_the_resume_file(scenarios):
    assert scenarios["resume"] == [{"path": os.path.join("view0", "checkpoint-latest.pth"), "step": 5}] * 2


@pytest.mark.slow
def test_resume_file_unreadable_on_one_rank_stops_both(scenarios):
    rank0, rank1 = scenarios["resume_unreadable"]
    assert rank0.get("error", "").endswith("checkpoint-latest.pth: rank 1: no such file"), rank0
    assert rank1.get("error", "").endswith("checkpoint-latest.pth: no such file"), rank1


# ---------------------------------------------------------------- launch: master address, timeout, devices

@pytest.fixture
def no_launch_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_unresolvable_master_fails_within_seconds_naming_it(no_launch_env):
    def no_such_host(host, port, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    no_launch_env.setattr(socket, "getaddrinfo", no_such_host)
    for name, value in dict(SLURM_PROCID="1", SLURM_LOCALID="1", SLURM_NTASKS="2", SLURM_JOB_ID="7",
                            SLURM_JOB_NODELIST="nosuchnode[01-02]").items():
        no_launch_env.setenv(name, value)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        setup_distributed(device="cpu", timeout_s=300)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "'nosuchnode01' does not resolve" in message and "Name or service not known" in message, message
    assert not dist.is_initialized()


def test_resolver_that_never_answers_is_cut_short(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(30))
    launch = detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "slowdns",
                            "MASTER_PORT": "1234"})
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="'slowdns' does not resolve .no answer from the resolver within 0.5s"):
        check_master_resolves(launch, timeout_s=0.5)
    assert time.monotonic() - start < 3
    monkeypatch.undo()
    check_master_resolves(detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}))


def test_collective_timeout_default_and_override():
    assert dist_timeout_s({}) == distributed.DEFAULT_TIMEOUT_S <= 900
    assert dist_timeout_s({"SIGMA_DIST_TIMEOUT": "120"}) == 120
    for bad in ("0", "-5", "ten"):
        with pytest.raises(RuntimeError, match="SIGMA_DIST_TIMEOUT"):
            dist_timeout_s({"SIGMA_DIST_TIMEOUT": bad})


def test_one_gpu_per_task_maps_every_local_rank_to_cuda0(monkeypatch):
    from deepspeed_support import device_rank

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed._cuda_index(3) == 0  # srun --gpus-per-task=1: each task sees its GPU as cuda:0
    env = DistEnv(rank=3, world_size=4, local_rank=3, device=torch.device("cuda", 0))
    assert device_rank(env) == 0  # what DeepSpeed is told, not LOCAL_RANK
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="local rank 3 but only 2 GPUs"):
        distributed._cuda_index(3)


def _deepspeed_under_srun(env: DistEnv) -> dict:
    from deepspeed.accelerator import get_accelerator

    import deepspeed_support
    from deepspeed_support import deepspeed_config

    accelerator, asked = get_accelerator(), []

    def one_visible_device(ordinal):  # what CUDA does for a task bound to one GPU
        asked.append(ordinal)
        if ordinal != 0:
            raise RuntimeError(f"CUDA error: invalid device ordinal {ordinal}")

    set_device, accelerator.set_device = accelerator.set_device, one_visible_device
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = deepspeed_config(batch_size=2, update_freq=1, world_size=env.world_size, zero_stage=0,
                              precision="fp32", clip_grad=None)
    engine = deepspeed_support.initialize(model, optimizer, config, env)
    loss = engine(torch.randn(2, 4)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    engine.destroy()
    accelerator.set_device = set_device
    return {"asked": sorted(set(asked)), "local_rank": os.environ["LOCAL_RANK"]}


@pytest.mark.slow
def test_deepspeed_under_srun_uses_the_visible_device(scenarios):
    if scenarios["deepspeed"][0] is None:
        pytest.skip("DeepSpeed is optional; requirements-test.txt installs it for CI")
    # SLURM_LOCALID 1 stays rank 1's LOCAL_RANK (node-local bookkeeping), but the device is cuda:0.
    assert scenarios["deepspeed"] == [{"asked": [0], "local_rank": "0"}, {"asked": [0], "local_rank": "1"}]
