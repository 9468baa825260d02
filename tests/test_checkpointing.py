"""checkpointing.py: atomic save, weights_only loading, resume selection, pruning, RNG round trip."""
import json
import logging
import os
import random
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import checkpointing as ckpt


def _state(step: int, **extra) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "epoch": step // 10, "step": step, **extra}


def _save_at(path: str, state: dict, mtime: int) -> str:
    """Save and pin the mtime, so ordering does not depend on the filesystem clock's resolution."""
    ckpt.save_checkpoint(path, state)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return path


def test_failed_save_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint-latest.pth")
    ckpt.save_checkpoint(path, _state(10))

    def half_written(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, _state(20))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 10
    assert os.listdir(tmp_path) == ["checkpoint-latest.pth"]


def test_successful_save_fsyncs_and_leaves_no_temp(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = str(tmp_path / "checkpoint-3.pth")
    ckpt.save_checkpoint(path, _state(30))
    ckpt.save_checkpoint(path, _state(31))  # overwrite an existing file
    assert os.listdir(tmp_path) == ["checkpoint-3.pth"]
    assert ckpt.load_checkpoint(path)["step"] == 31
    assert len(synced) == 4  # file and directory, twice


@pytest.mark.parametrize("extra, where", [
    ({"config": {"fn": lambda x: x}}, "config.fn: function"),
    ({"config": {"sizes": [1, 2, object()]}}, r"config.sizes\[2\]: object"),
    ({"metric": np.float64(0.5)}, "metric: float64"),  # a float subclass weights_only still rejects
    ({"config": {("a", 1): 2}}, "key of type tuple"),
    ({"model": nn.Linear(2, 2)}, "model: Linear"),
])
def test_non_primitive_state_rejected_before_writing(tmp_path, extra, where):
    path = tmp_path / "checkpoint-1.pth"
    with pytest.raises(TypeError, match=where):
        ckpt.save_checkpoint(str(path), _state(1, **extra))
    assert os.listdir(tmp_path) == []


def test_training_state_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(3, 4)
    model(x).square().mean().backward()
    optimizer.step()
    config = {"model": "tiny", "lr": 1e-3, "betas": (0.9, 0.95), "use_checkpoint": False, "resume": None,
              "frames": [16, 8], "nested": {"depth": 2}}
    path = str(tmp_path / "checkpoint-0.pth")
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict(), "rng": ckpt.rng_state(), "config": config,
                                "epoch": 0, "step": 1})

    loaded = ckpt.load_checkpoint(path)
    assert loaded["config"] == config
    assert loaded["scaler"] == scaler.state_dict()
    restored = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2))
    restored.load_state_dict(loaded["model"])
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1.0)
    restored_opt.load_state_dict(loaded["optimizer"])
    assert restored_opt.param_groups[0]["lr"] == 1e-3
    exp_avg = [s["exp_avg"] for s in optimizer.state.values()]
    torch.testing.assert_close([s["exp_avg"] for s in restored_opt.state.values()], exp_avg, rtol=0, atol=0)
    ckpt.set_rng_state(loaded["rng"])


def test_resume_skips_corrupt_newest_with_warning(tmp_path, caplog):
    _save_at(str(tmp_path / "checkpoint-1.pth"), _state(10), mtime=1000)
    _save_at(str(tmp_path / "checkpoint-2.pth"), _state(20), mtime=2000)
    latest = _save_at(str(tmp_path / "checkpoint-latest.pth"), _state(25), mtime=3000)
    size = os.path.getsize(latest)
    with open(latest, "r+b") as f:
        f.truncate(size // 2)
    os.utime(latest, ns=(3000 * 10**9, 3000 * 10**9))

    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        path, state = ckpt.find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "checkpoint-2.pth")
    assert state["step"] == 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "checkpoint-latest.pth" in warnings[0]
    assert os.path.exists(latest)  # kept for inspection


def test_equal_mtimes_prefer_largest_step(tmp_path):
    # Name order alone would pick checkpoint-1.pth; the stored step must win.
    _save_at(str(tmp_path / "checkpoint-1.pth"), _state(5), mtime=1000)
    _save_at(str(tmp_path / "checkpoint-latest.pth"), _state(7), mtime=1000)
    path, state = ckpt.find_resume_checkpoint(str(tmp_path))
    assert (os.path.basename(path), state["step"]) == ("checkpoint-latest.pth", 7)


def test_resume_candidates_newest_first_without_temp_files(tmp_path):
    _save_at(str(tmp_path / "checkpoint-2.pth"), _state(20), mtime=1000)
    _save_at(str(tmp_path / "checkpoint-10.pth"), _state(100), mtime=3000)
    _save_at(str(tmp_path / "checkpoint-latest.pth"), _state(50), mtime=2000)
    (tmp_path / "checkpoint-latest.pth.tmp-123").write_bytes(b"partial")
    (tmp_path / "log.txt").write_text("x")
    names = [os.path.basename(p) for p in (p for _, p in ckpt._by_mtime(str(tmp_path)))]
    assert names == ["checkpoint-10.pth", "checkpoint-latest.pth", "checkpoint-2.pth"]
    assert ckpt.checkpoint_path(str(tmp_path), 10) == str(tmp_path / "checkpoint-10.pth")
    assert ckpt.checkpoint_path(str(tmp_path)) == str(tmp_path / "checkpoint-latest.pth")


@pytest.mark.parametrize("content, reason", [
    ({"model": {}}, r"missing keys \['epoch', 'step'\]"),
    (torch.zeros(3), "expected a dict, got Tensor"),  # a bare state dict tensor, say
])
def test_missing_keys_is_checkpoint_error(tmp_path, content, reason):
    path = str(tmp_path / "checkpoint-1.pth")
    torch.save(content, path)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint-1.pth") as info:
        ckpt.load_checkpoint(path)
    assert isinstance(info.value, RuntimeError) and info.value.path == path
    assert re.search(reason, info.value.reason)


def test_unreadable_file_is_checkpoint_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="missing.pth"):
        ckpt.load_checkpoint(str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="garbage.pth"):
        ckpt.load_checkpoint(str(garbage))


def test_nothing_to_resume(tmp_path):
    assert ckpt.find_resume_checkpoint(str(tmp_path)) is None
    assert ckpt.find_resume_checkpoint(str(tmp_path / "absent")) is None
    (tmp_path / "checkpoint-latest.pth.tmp-7").write_bytes(b"partial")
    (tmp_path / "checkpoint-1.pth").write_bytes(b"truncated")
    assert ckpt.find_resume_checkpoint(str(tmp_path)) is None


def test_prune_keeps_newest_epochs_and_latest(tmp_path):
    for epoch in range(1, 6):
        _save_at(str(tmp_path / f"checkpoint-{epoch}.pth"), _state(epoch * 10), mtime=1000 + epoch)
    # The latest file is the oldest by mtime here: it must survive anyway.
    _save_at(str(tmp_path / "checkpoint-latest.pth"), _state(3), mtime=10)
    assert ckpt.prune_checkpoints(str(tmp_path), keep_last=0) == []

    removed = ckpt.prune_checkpoints(str(tmp_path), keep_last=2)
    assert sorted(os.path.basename(p) for p in removed) == ["checkpoint-1.pth", "checkpoint-2.pth", "checkpoint-3.pth"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4.pth", "checkpoint-5.pth", "checkpoint-latest.pth"]


def test_prune_orders_by_epoch_number_not_name(tmp_path):
    # Lexically "checkpoint-10" < "checkpoint-9"; numerically 10 is newer.
    for epoch in (8, 9, 10):
        _save_at(str(tmp_path / f"checkpoint-{epoch}.pth"), _state(epoch * 10), mtime=1000)
    removed = ckpt.prune_checkpoints(str(tmp_path), keep_last=2)
    assert [os.path.basename(p) for p in removed] == ["checkpoint-8.pth"]


def _draw() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(3).tolist(),
            torch.rand(3).tolist(), torch.randn(3).tolist())


def test_rng_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # An odd number of normals leaves a cached Gaussian in python's and numpy's state.
    random.gauss(0, 1)
    np.random.randn(1)
    path = str(tmp_path / "checkpoint-0.pth")
    ckpt.save_checkpoint(path, {"model": {}, "epoch": 0, "step": 0, "rng": ckpt.rng_state()})
    expected = _draw()
    _draw()  # move every generator on
    ckpt.set_rng_state(ckpt.load_checkpoint(path)["rng"])
    assert _draw() == expected


def test_disk_full_names_the_space_needed_and_the_last_good_file(tmp_path, monkeypatch):
    import errno

    from checkpointing import DiskFullError

    good = tmp_path / "checkpoint-3.pth"
    ckpt.save_checkpoint(str(good), {"model": {"w": torch.zeros(4)}, "epoch": 4, "step": 8})

    def full(state, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as info:
        ckpt.save_checkpoint(str(tmp_path / "checkpoint-latest.pth"), {"model": {"w": torch.zeros(2**18)}, "step": 9})
    message = str(info.value)
    assert f"no space left on {tmp_path}" in message and "needs about 1 MB" in message
    assert message.endswith(f"last good checkpoint is {good}")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3.pth"]  # no temp file left behind


def test_resumed_run_log_drops_the_records_it_repeats(tmp_path):
    from distributed import DistEnv
    from run_log import RunLog

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 8)) + '{"st')
    (tmp_path / "log.txt").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(3)))
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    RunLog(env, str(tmp_path), None, 10, {}, resume_at=(1, 4)).close()
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "log.txt")] == [0]
