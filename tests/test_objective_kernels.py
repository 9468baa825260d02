"""objective_kernels: each fused kernel, kept buffer and host-side index equals the plain torch it replaces."""
import pytest
import torch
import torch.nn.functional as F

from modeling_finetune import MaskIndex
from objective_kernels import HostMaskIndex, ScoresInto, centred_std, cross_entropy, kept_buffer


@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_equals_torch(soft):
    logits = (torch.randn(50, 7) * 5).requires_grad_()
    target = torch.softmax(torch.randn(50, 7), 1) if soft else torch.randint(0, 7, (50,))
    ours = cross_entropy(logits, target)
    (g_ours,) = torch.autograd.grad(ours * 3.0, logits)
    ref = F.cross_entropy(logits, target)
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_cross_entropy_gradcheck():
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (6,))
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, target), (logits,))


@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_in_a_scratch_buffer_equals_torch_and_refuses_a_second_backward(soft):
    logits = (torch.randn(50, 7) * 5).requires_grad_()
    target = torch.softmax(torch.randn(50, 7), 1) if soft else torch.randint(0, 7, (50,))
    scratch = torch.full((50, 7), float("nan"))  # whatever it held must not matter
    ours = cross_entropy(logits, target, scratch=scratch)
    ref = F.cross_entropy(logits, target)
    torch.testing.assert_close(ours, ref)
    assert torch.isfinite(scratch).all()  # the buffer was written
    (g_ours,) = torch.autograd.grad(ours * 3.0, logits, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    torch.testing.assert_close(g_ours, g_ref)
    # The gradient was written over the saved softmax: autograd must refuse to reuse it.
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(ours, logits)


def test_cross_entropy_refuses_a_scratch_of_another_shape():
    with pytest.raises(ValueError, match="scratch must be a \\(50, 7\\)"):
        cross_entropy(torch.randn(50, 7), torch.randint(0, 7, (50,)), scratch=torch.empty(50, 8))


def test_kept_buffer_is_reused_and_remade_when_shape_dtype_or_device_differ():
    buffers = {}
    first = kept_buffer(buffers, "a", (4, 3), torch.float32, torch.device("cpu"))
    assert buffers == {"a": first} and first.shape == (4, 3)
    assert kept_buffer(buffers, "a", (4, 3), torch.float32, torch.device("cpu")) is first
    assert kept_buffer(buffers, "a", (5, 3), torch.float32, torch.device("cpu")) is not first
    assert kept_buffer(buffers, "a", (5, 3), torch.float64, torch.device("cpu")).dtype == torch.float64
    assert kept_buffer(buffers, "b", (5, 3), torch.float64, torch.device("cpu")) is not buffers["a"]


def test_scores_into_a_kept_buffer_equal_a_matmul_in_values_and_gradients():
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    buffers = {}
    kept = ScoresInto.apply(x, w, buffers, "s")
    plain = x @ w.t()
    torch.testing.assert_close(kept, plain, rtol=0, atol=0)
    assert kept.data_ptr() == buffers["s"].data_ptr()  # written into the kept buffer
    g = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(kept, (x, w), g), torch.autograd.grad(plain, (x, w), g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a, b: ScoresInto.apply(a, b, {}, "s"), (x, w))
    again = ScoresInto.apply(torch.randn_like(x), w, buffers, "s")  # the same memory, new values
    assert again.data_ptr() == kept.data_ptr() and not torch.equal(again, plain)


@pytest.mark.parametrize("shape,dim", [((2, 30, 16, 3), -2), ((2, 40, 24), 1), ((7, 5), -1)])
def test_centred_std_equals_torch_mean_and_unbiased_std(shape, dim):
    x = torch.rand(shape) * 3 + 1
    centred, mean, std = centred_std(x, dim)
    ref_mean = x.mean(dim, keepdim=True)
    torch.testing.assert_close(mean.movedim(-1, dim), ref_mean)
    torch.testing.assert_close(std.movedim(-1, dim), x.var(dim, unbiased=True, keepdim=True).sqrt())
    torch.testing.assert_close(centred.movedim(-1, dim), x - ref_mean)
    assert centred.is_contiguous() and centred.data_ptr() != x.data_ptr()  # a copy: x is untouched


def test_host_mask_index_adds_the_index_of_each_batch_mask():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 4, 6]] = True
    mask[1, [0, 2, 7]] = True
    (batch,) = list(HostMaskIndex([{"mask": mask.reshape(2, 2, 4), "video": "v"}]))
    index = MaskIndex.of(mask)
    assert batch["video"] == "v" and torch.equal(batch["mask"], mask.reshape(2, 2, 4))
    assert torch.equal(batch["masked_index"], index.masked) and torch.equal(batch["visible_index"], index.visible)
    assert batch["masked_index"].tolist() == [[1, 4, 6], [0, 2, 7]]
    assert len(HostMaskIndex([1, 2, 3])) == 3
