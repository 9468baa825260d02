"""Small device-path choices: kNN in one similarity pass, this rank's CUDA RNG state only, which
buffers DDP re-broadcasts, and DeepSpeed's fp32 master weights in the plain checkpoint."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import checkpointing
from evals.common import knn_classify, knn_votes


def _brute_force_votes(bank, bank_labels, queries, num_classes, k, temperature):
    sim = queries @ bank.T
    votes = torch.zeros(queries.shape[0], num_classes)
    for row in range(queries.shape[0]):
        top = sim[row].topk(min(k, bank.shape[0]))
        for s, i in zip(top.values, top.indices):
            votes[row, bank_labels[i]] += (s / temperature).exp()
    return votes


def test_knn_votes_for_every_k_from_one_pass():
    bank, queries = F.normalize(torch.randn(40, 8), dim=-1), F.normalize(torch.randn(7, 8), dim=-1)
    labels = torch.randint(0, 4, (40,))
    votes = knn_votes(bank, labels, queries, 4, [1, 5, 20, 100], 0.07, chunk=3)
    for k, v in votes.items():
        torch.testing.assert_close(v, _brute_force_votes(bank, labels, queries, 4, k, 0.07))
    torch.testing.assert_close(knn_classify(bank, labels, queries, 4, 5, 0.07), votes[5])


class _FakeCuda:
    """A machine with 3 GPUs of which this process uses cuda:1."""

    def __init__(self):
        self.restored = []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((4,), 1, dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: pytest.fail("get_rng_state_all touches every visible GPU"))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": self.restored.append(state))


def test_only_this_ranks_cuda_rng_state_is_saved_and_restored(monkeypatch):
    cuda = _FakeCuda()
    cuda.install(monkeypatch)
    state = checkpointing.rng_state()
    assert torch.equal(state["cuda_device"], torch.full((4,), 1, dtype=torch.uint8)) and "cuda" not in state
    checkpointing.set_rng_state(state)
    assert len(cuda.restored) == 1 and torch.equal(cuda.restored[0], state["cuda_device"])
    # Older checkpoints hold one state per visible GPU: only this device's entry is restored.
    old = {k: v for k, v in state.items() if k != "cuda_device"}
    old["cuda"] = [torch.full((4,), i, dtype=torch.uint8) for i in range(3)]
    cuda.restored.clear()
    checkpointing.set_rng_state(old)
    assert len(cuda.restored) == 1 and torch.equal(cuda.restored[0], old["cuda"][1])


def test_ddp_broadcasts_buffers_only_where_they_change(monkeypatch):
    import distributed

    made = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, **kw: made.append(kw))
    env = distributed.DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    from helpers import tiny_pretrain

    distributed.wrap_ddp(tiny_pretrain("mlp"), env)  # sin-cos tables only
    distributed.wrap_ddp(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), env)  # running statistics
    assert [kw["broadcast_buffers"] for kw in made] == [False, True]


@pytest.mark.slow
def test_deepspeed_bf16_plain_weights_are_the_fp32_masters(monkeypatch):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional; requirements-test.txt installs it for CI")
    import deepspeed_support
    import distributed

    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):  # set for DeepSpeed in this process; undone afterwards
        monkeypatch.setenv(name, "1" if name == "WORLD_SIZE" else "0")
    env = distributed.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    try:
        for stage in (0, 2):  # ZeRO 0 (FP16_UnfusedOptimizer masters), ZeRO 2 (partitioned masters)
            model = nn.Linear(4, 3)
            config = deepspeed_support.deepspeed_config(batch_size=2, update_freq=1, world_size=1, zero_stage=stage,
                                                        precision="bf16", clip_grad=None)
            engine = deepspeed_support.initialize(model, torch.optim.AdamW(model.parameters(), lr=1e-3), config, env)
            for _ in range(2):
                engine.backward(engine(torch.randn(2, 4, dtype=torch.bfloat16)).float().pow(2).mean())
                engine.step()
            weights = deepspeed_support.master_state_dict(engine)
            assert {k: v.dtype for k, v in weights.items()} == {"weight": torch.float32, "bias": torch.float32}
            # The module holds the bf16 rounding of the masters, which are not themselves bf16 values.
            torch.testing.assert_close(weights["weight"].bfloat16(), engine.module.weight.detach())
            assert not torch.equal(weights["weight"], engine.module.weight.detach().float()), stage
            engine.destroy()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
