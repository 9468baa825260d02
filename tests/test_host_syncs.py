"""Host syncs in the pretraining step: none once the batch's MaskIndex is built on the host.

On the CPU there is no device to wait for, so the ops that would wait on CUDA are counted instead
(data-dependent output sizes, scalar reads); on CUDA the sync debug mode turns any sync into an error.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import engine_for_pretraining
from engine_for_pretraining import compute_loss, prototype_counts
from helpers import GRID, clips, tiny_objective, tiny_pretrain, tiny_teacher
from masking_generator import tube_mask
from modeling_finetune import MaskIndex, take_tokens
from objective_kernels import HostMaskIndex

aten = torch.ops.aten
# Ops whose output size or value the host must read from the device.
SYNCING = {aten.nonzero.default, aten._local_scalar_dense.default, aten.bincount.default, aten.masked_select.default,
           aten._unique2.default, aten.unique_dim.default, aten.is_nonzero.default}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if func in SYNCING or bool_index:
            self.ops.append(str(func))
        return func(*args, **kwargs)


def _step(model, mask, teacher=None):
    loss, stats = compute_loss(model, tiny_objective(model), clips(), mask, teacher=teacher)
    loss.backward()
    return loss, stats


@pytest.mark.parametrize("target_type", ["mlp", "dino_v1"])
def test_pretraining_step_without_host_syncs(target_type):
    model = tiny_pretrain(target_type)
    teacher = tiny_teacher() if target_type == "dino_v1" else None
    mask = tube_mask(2, GRID, 0.5)
    index = MaskIndex.of(mask)  # on the host, as HostMaskIndex does before the batch moves
    with SyncCounter() as counter:
        _step(model, index, teacher)
    assert counter.ops == [], counter.ops
    with SyncCounter() as counter:  # the boolean mask costs its count (twice: the value and the check)
        _step(model, mask, teacher)
    assert 0 < len(counter.ops) <= 2, counter.ops


def test_index_path_is_bit_identical_to_boolean_indexing():
    model = tiny_pretrain("mlp")
    mask = tube_mask(2, GRID, 0.5)
    torch.manual_seed(1)
    videos = clips()
    index = MaskIndex.of(mask)
    assert torch.equal(index.masked, mask.nonzero()[:, 1].reshape(2, -1))
    assert torch.equal(index.visible, (~mask).nonzero()[:, 1].reshape(2, -1))
    x = torch.randn(2, mask.shape[1], 3, 5)
    assert torch.equal(take_tokens(x, index.masked), x[mask].reshape(2, -1, 3, 5))
    encoder = model.encoder.eval()
    torch.testing.assert_close(encoder.forward_tokens(videos, visible=index.visible),
                               encoder.forward_tokens(videos, visible=~mask), rtol=0, atol=0)
    with pytest.raises(ValueError, match="same number of tokens"):
        MaskIndex.of(torch.tensor([[True, False], [True, True]]))


def test_prototype_counts_match_bincount():
    scores = torch.randn(50, 7)
    assert torch.equal(prototype_counts(scores), torch.bincount(scores.argmax(-1), minlength=7).float())


def test_loader_carries_the_host_index():
    mask = tube_mask(2, GRID, 0.5)
    batches = list(HostMaskIndex([{"video": clips(), "mask": mask}]))
    index = MaskIndex.of(mask)
    assert torch.equal(batches[0]["visible_index"], index.visible)
    assert torch.equal(batches[0]["masked_index"], index.masked)
    assert len(HostMaskIndex([1, 2, 3])) == 3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the sync debug mode needs CUDA")
def test_cuda_step_raises_on_no_sync():
    model = tiny_pretrain("mlp").cuda()
    index = MaskIndex.of(tube_mask(2, GRID, 0.5)).to(torch.device("cuda"))
    videos = clips().cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = engine_for_pretraining.compute_loss(model, tiny_objective(model), videos, index)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _linear_steps(device: torch.device, nan_call: int):
    """(watch, train_steps generator) of a Linear model, SGD, 6 steps, log_every 100 (logs at steps 1
    and 6 only), whose loss is NaN at forward `nan_call`."""
    from schedules import make_schedule
    from training_loop import NonFiniteWatch, TorchUpdate, train_steps

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [{"video": torch.randn(2, 4, device=device)} for _ in range(6)]
    schedule = make_schedule(micro_batches=6, accum=1, batch_size=256, world_size=1, num_videos=6, lr=0.1, min_lr=0.1,
                             warmup_lr=0.1, epochs=1, warmup_epochs=0, warmup_steps=-1, weight_decay=0.0,
                             weight_decay_end=None)

    calls = []

    def loss_fn(batch):
        calls.append(1)
        loss = model(batch["video"]).pow(2).mean()
        if len(calls) == nan_call:
            loss = loss * float("nan")
        return loss, {"loss": loss.detach()}

    watch = NonFiniteWatch()
    return watch, train_steps(model, loader, TorchUpdate(model, optimizer), schedule, loss_fn, device=device,
                              epoch=0, start_step=0, log_every=100, nonfinite=watch)


def test_train_steps_reads_the_device_only_at_log_steps():
    """The non-finite watch notes every step on the device: a step that is not a log step reads
    nothing back (SGD: AdamW's CPU step counter would be read by the optimizer itself)."""
    _, steps = _linear_steps(torch.device("cpu"), nan_call=3)  # the third step (2 done before it)
    assert next(steps).log is not None  # the first step logs (and reads the watch)
    with SyncCounter() as counter:
        for _ in range(4):  # steps 2-5: no log, no read, even with the NaN at step 3 noted
            assert next(steps).log is None
    assert counter.ops == [], counter.ops
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 2 \(epoch 0\) on rank\(s\) \[0\]"):
        next(steps)  # the epoch's last step logs: the watch is read and names the first bad step


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the sync debug mode needs CUDA")
def test_cuda_train_steps_without_a_sync_between_log_steps():
    _, steps = _linear_steps(torch.device("cuda"), nan_call=3)
    assert next(steps).log is not None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            assert next(steps).log is None
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 2 \(epoch 0\)"):
        next(steps)
