"""Fused kernels and kept buffers of the pretraining objective: the same numbers as plain torch, faster.

None of this changes a value; each piece exists for a cost measured on the CPU (BENCHMARKS.md, "Training
step: time, FLOPs, stages and fast paths"), and tests/test_objective_kernels.py proves each equal to the
plain torch it replaces, values and gradients:

- Page faults. A fresh [M, K] fp32 matrix of prototype scores or codes is 34 MB at ViT-S batch 2 (M = 2822
  masked tubes, K = 3000 prototypes), above glibc's 32 MB mmap threshold: every allocation is a fresh
  mapping whose pages the kernel faults in on first touch, ~10-15 ms per matrix per step on one core.
  `kept_buffer` keeps such matrices from step to step; `ScoresInto` writes the prototype scores into one,
  `cross_entropy(..., scratch=)` takes a spent code matrix for its softmax and gradient.
- Passes over [M, K]. `cross_entropy` keeps exp(logits - row max) as its only [M, K] tensor and turns it
  into the gradient in place (F.cross_entropy keeps log-softmax, then makes the gradient anew).
- Welford. `centred_std` computes mean and unbiased std in two passes over contiguous rows, 4x faster than
  torch.var when the reduced dim is not innermost (the per-tube pixel target normalisation).
- Host syncs. `HostMaskIndex` builds each batch's token index on the host, before the batch moves, where
  counting a device mask would wait for the device.

This module imports torch and the model file's `MaskIndex` only (the bottom layer, beside the models).
"""
from typing import Dict, Iterable, Optional, Tuple

import torch

from modeling_finetune import MaskIndex


def kept_buffer(buffers: Dict[str, torch.Tensor], name: str, shape: Tuple[int, ...], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """`buffers[name]`, made (or remade when its shape, dtype or device differs) as an empty tensor.

    The caller overwrites it; whatever held it before (the previous step's scores or codes) is stale.
    """
    out = buffers.get(name)
    if out is None or out.shape != shape or out.device != device or out.dtype != dtype:
        out = buffers[name] = torch.empty(shape, dtype=dtype, device=device)
    return out


class ScoresInto(torch.autograd.Function):
    """features [M, D] @ prototypes [K, D]^T -> [M, K], written into `buffers[name]` (`kept_buffer`).

    The output aliases the buffer, so it is valid until the next call of that name; nothing saves it
    for backward (the cross-entropy keeps its own softmax), whose products are those of torch.mm's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, buffers: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
        out = kept_buffer(buffers, name, (x.shape[0], w.shape[0]), x.dtype, x.device)
        ctx.save_for_backward(x, w)
        return torch.mm(x, w.t(), out=out).detach()  # a new tensor on the buffer's memory

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        grad_x = grad.mm(w) if ctx.needs_input_grad[0] else None  # [M, D]
        grad_w = x.t().mm(grad).t() if ctx.needs_input_grad[1] else None  # [K, D], as mm's backward
        return grad_x, grad_w, None, None


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [M, K] against hard labels [M] or soft codes [M, K].

    The value of F.cross_entropy (the log-sum-exp computed as torch.logsumexp computes it) and its
    gradient, softmax - target, with exp(logits - row max) as the only [M, K] buffer: forward
    writes it into `scratch` when given (a finished code matrix: no fresh [M, K] buffer) and saves
    it in place of the logits; backward scales it by grad / (M * row sum) into the gradient, in
    place (autograd then refuses a second backward through it), or, without `scratch`, on a copy
    (retain_graph works).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, scratch: Optional[torch.Tensor]) -> torch.Tensor:
        top = logits.amax(dim=1, keepdim=True)  # [M, 1]
        top.masked_fill_(top.abs() == float("inf"), 0.0)  # as torch.logsumexp: rows of +-inf stay finite
        weights = torch.sub(logits, top, out=scratch).exp_()  # [M, K] exp(logit - row max)
        total = weights.sum(dim=1, keepdim=True)  # [M, 1]
        lse = total.log().add_(top).squeeze(1)  # [M]
        if target.dtype == torch.long:
            picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)  # [M]
        else:
            picked = torch.linalg.vecdot(target, logits)  # [M]; codes sum to 1 per row
        ctx.save_for_backward(weights, total, target)
        ctx.in_place = scratch is not None
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, total, target = ctx.saved_tensors
        scale = grad / weights.shape[0]  # d(mean)/d(row loss)
        g = weights if ctx.in_place else weights.clone()  # [M, K]
        g.mul_(scale / total)  # softmax * scale
        if target.dtype == torch.long:
            g[torch.arange(g.shape[0], device=g.device), target] -= scale
        else:
            g.addcmul_(target, -scale)  # - target * scale, without an [M, K] temporary
        return g, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy of [M, K] logits (computed in at least fp32) against [M] labels or [M, K] codes.

    F.cross_entropy's value and gradient. scratch: an [M, K] buffer of the computation's dtype whose
    contents may be overwritten (the softmax, then the gradient); backward then runs once per forward.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if scratch is not None and (scratch.shape != logits.shape or scratch.dtype != logits.dtype
                                or scratch.device != logits.device or scratch.requires_grad):
        raise ValueError(f"scratch must be a {tuple(logits.shape)} {logits.dtype} tensor on {logits.device} "
                         f"without grad, got {tuple(scratch.shape)} {scratch.dtype} on {scratch.device}")
    return _CrossEntropy.apply(logits, target, scratch)


def centred_std(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean, mean, unbiased std) along `dim`, on a copy of `x` with `dim` moved innermost.

    Two passes (the mean, then the centred sum of squares) over contiguous rows: the values of
    x.mean and x.var(unbiased=True).sqrt() to float rounding, and 4x faster on the CPU than
    torch.var's Welford loop when `dim` is not innermost ([2, 1411, 512, 3] pixel tubes, dim -2:
    12 ms against 53 for the whole normalisation).
    Returns: centred [..., n] (`dim` last), mean [..., 1], std [..., 1].
    """
    centred = x.movedim(dim, -1).clone(memory_format=torch.contiguous_format)  # [..., n], a copy
    mean = centred.mean(dim=-1, keepdim=True)  # [..., 1]
    centred.sub_(mean)
    std = torch.linalg.vecdot(centred, centred).div_(x.shape[dim] - 1).sqrt_().unsqueeze(-1)  # [..., 1]
    return centred, mean, std


class HostMaskIndex:
    """`loader` whose batches also carry their mask's `MaskIndex` ("visible_index", "masked_index"),
    built on the host before the batch moves to the device, where counting the mask would sync."""

    def __init__(self, loader: Iterable):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            index = MaskIndex.of(batch["mask"].flatten(1).to(torch.bool))
            yield {**batch, "visible_index": index.visible, "masked_index": index.masked}
