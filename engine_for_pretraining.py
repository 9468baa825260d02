"""The SIGMA / VideoMAE pretraining objective, read top to bottom.

    clip ──patchify──> tubes ──(masked, per-tube normalised)──> targets ──projection──> logits_target
      └──encoder(visible)──> decoder(mask tokens) ──> pred ─────────────────────────> logits_pred
    Sinkhorn codes of each side; each side's scores predict the other side's codes.

`Objective` holds the loss and its settings (built once by the driver); `train_one_epoch` yields
after every optimiser step (training_loop.train_steps).
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_finetune import MaskIndex, patchify, take_tokens
from sinkhorn import needs_log_domain, sinkhorn_knopp
from training_loop import StepDone, train_steps


def _centred_std(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def normalize_per_group(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(x - mean) / (unbiased std + 1e-6) along `dim`, the official target normalisation.

    Returns x's shape (a strided view: `dim` is innermost in memory)."""
    centred, _, std = _centred_std(x, dim)
    return centred.div_(std.add_(1e-6)).movedim(-1, dim)


def denormalize_like(x: torch.Tensor, reference: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `normalize_per_group` with the statistics of `reference` (e.g. a pixel
    prediction mapped back with its tube's true mean and std, as VideoMAE's visualisation)."""
    _, mean, std = _centred_std(reference, dim)
    return x * (std.add_(1e-6).movedim(-1, dim)) + mean.movedim(-1, dim)


def pixel_targets(tubes: torch.Tensor, bool_masked_pos: Union[torch.Tensor, MaskIndex],
                  normalize: bool = True) -> torch.Tensor:
    """Pixel targets of the masked tubes.

    Args:
        tubes: [B, N, P, C] ImageNet-normalised tubes from `patchify`.
        bool_masked_pos: [B, N] bool, or its `MaskIndex`.
    Returns:
        [B, N_mask, P*C]: pixels in [0, 1], normalised per tube and channel when `normalize`.
    """
    # Filled on the device, not copied from a host list (a pageable copy waits for the device).
    mean = torch.stack([tubes.new_full((), m) for m in IMAGENET_DEFAULT_MEAN])  # [C]
    std = torch.stack([tubes.new_full((), s) for s in IMAGENET_DEFAULT_STD])  # [C]
    masked = take_tokens(tubes, MaskIndex.of(bool_masked_pos).masked)  # [B, N_mask, P, C], a gathered copy
    masked.mul_(std).add_(mean)  # in [0, 1]; in place: no further [B, N_mask, P, C] buffers
    if normalize:
        masked = normalize_per_group(masked, dim=-2)
    return masked.flatten(-2)


def teacher_targets(teacher: nn.Module, videos: torch.Tensor, bool_masked_pos: torch.Tensor, tubelet_size: int,
                    normalize: bool = True) -> torch.Tensor:
    """Frozen-teacher features of the masked tokens.

    The teacher sees the first frame of every tubelet. Features are normalised per clip and
    channel over all tokens (before masking), as the official SIGMA-DINO.
    Returns:
        [B, N_mask, C_teacher].
    """
    B, _, T = videos.shape[:3]
    frames = videos[:, :, ::tubelet_size].transpose(1, 2).flatten(0, 1)  # [B*T/t, 3, H, W]
    feats = teacher(frames).float()  # [B*T/t, h*w, C]
    feats = feats.reshape(B, -1, feats.shape[-1])  # [B, N, C], tokens in (t, h, w) order
    if normalize:
        feats = normalize_per_group(feats, dim=1)
    return take_tokens(feats, MaskIndex.of(bool_masked_pos).masked)


@dataclass(frozen=True)
class Objective:
    """The pretraining loss and its settings, built once by the driver with `Objective.of(model, ...)`.

    target_type / loss_func and the tube geometry are the model's (they shape its heads); the rest
    are the objective's own: Sinkhorn epsilon (on the cosine scale) and iterations, the softmax
    temperature of the swapped prediction, target normalisation and soft codes.
    """
    target_type: str
    loss_func: str
    tubelet_size: int
    patch_size: int
    sinkhorn_eps: float = 0.05
    sinkhorn_iterations: int = 10
    temperature: float = 0.1
    normalize_target: bool = True
    soft_codes: bool = False
    # Code matrices kept from step to step (`codes(..., reuse=name)`): a fresh [M, K] fp32 buffer
    # is 34 MB at ViT-S batch 2, above glibc's 32 MB mmap threshold, and faulting its pages in
    # costs ~10 ms per step each on the CPU. A step still holding one for its backward when the
    # next forward rewrites it fails loudly (autograd's version check on the saved softmax).
    _buffers: Dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, model: nn.Module, **settings) -> "Objective":
        """The objective of a PretrainVisionTransformer (possibly DDP-wrapped or compiled)."""
        core = getattr(model, "module", model)
        core = getattr(core, "_orig_mod", core)
        return cls(core.target_type, core.loss_func, core.tubelet_size, core.patch_size, **settings)

    @property
    def log_domain(self) -> bool:
        return needs_log_domain(self.sinkhorn_eps)

    def codes(self, logits: torch.Tensor, reuse: Optional[str] = None) -> torch.Tensor:
        """[M, K] Sinkhorn codes of logits = cosines / temperature (epsilon rescaled to match).

        reuse: write them into this objective's buffer of that name (made, or remade when the
        shape or device changes), which the previous step's codes of that name occupied.
        """
        out = None
        if reuse is not None:
            out = self._buffers.get(reuse)
            if out is None or out.shape != logits.shape or out.device != logits.device:
                out = self._buffers[reuse] = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        return sinkhorn_knopp(logits, self.sinkhorn_eps / self.temperature, self.sinkhorn_iterations,
                              log_domain=self.log_domain, out=out)

    @torch.no_grad()
    def targets(self, videos: torch.Tensor, tubes: torch.Tensor, index: MaskIndex,
                teacher: Optional[nn.Module] = None) -> torch.Tensor:
        """[B, N_mask, D_t] targets of the masked tubes: pixels (pixel, mlp) or teacher features (dino_*)."""
        if self.target_type in ("pixel", "mlp"):
            return pixel_targets(tubes, index, self.normalize_target)  # [B, N_mask, P*C]
        if teacher is None:
            raise ValueError(f"target_type {self.target_type!r} needs a teacher model")
        return teacher_targets(teacher, videos, index, self.tubelet_size, self.normalize_target)


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [M, K] against hard labels [M] or soft codes [M, K].

    The value of F.cross_entropy (the log-sum-exp computed as torch.logsumexp computes it) and its
    gradient, softmax - target, with exp(logits - row max) as the only [M, K] buffer: forward
    writes it into `scratch` when given (a finished code matrix: no fresh [M, K] buffer, whose
    pages the CPU would fault in at ~10 ms per 34 MB) and saves it in place of the logits;
    backward scales it by grad / (M * row sum) into the gradient, in place (autograd then refuses
    a second backward through it), or, without `scratch`, on a copy (retain_graph works).
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

    scratch: an [M, K] buffer of the computation's dtype whose contents may be overwritten (the
    softmax, then the gradient); backward then runs once per forward.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if scratch is not None and (scratch.shape != logits.shape or scratch.dtype != logits.dtype
                                or scratch.device != logits.device or scratch.requires_grad):
        raise ValueError(f"scratch must be a {tuple(logits.shape)} {logits.dtype} tensor on {logits.device} "
                         f"without grad, got {tuple(scratch.shape)} {scratch.dtype} on {scratch.device}")
    return _CrossEntropy.apply(logits, target, scratch)


def swapped_prediction(logits_target: torch.Tensor, logits_pred: torch.Tensor, objective: Objective,
                       ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """SIGMA's symmetric cluster prediction.

    Args:
        logits_target: [M, K] projection-side cosines / T; trains projection and prototypes.
        logits_pred: [M, K] decoder-side cosines / T against detached prototypes.
    Returns:
        loss = CE(logits_target, codes_pred) + CE(logits_pred, codes_target), with hard (argmax)
        Sinkhorn codes as official, or the codes themselves when `objective.soft_codes` (SwAV).
    """
    q_target = objective.codes(logits_target, reuse="target")  # [M, K]
    q_pred = objective.codes(logits_pred, reuse="pred")  # [M, K]
    best_target, best_pred = row_argmax(q_target), row_argmax(q_pred)  # [M]
    stats = {**_code_stats(q_target, best_target, "target"), **_code_stats(q_pred, best_pred, "pred"),
             **_score_stats(logits_target.detach(), "target"), **_score_stats(logits_pred.detach(), "pred")}
    if objective.soft_codes:
        loss_target = cross_entropy(logits_target, q_pred)  # projection predicts the decoder's codes
        loss_pred = cross_entropy(logits_pred, q_target)  # decoder predicts the projection's codes
    else:
        # Hard codes: the code matrices are spent, so their buffers take the softmax and gradient.
        loss_target = cross_entropy(logits_target, best_pred, scratch=q_target)
        loss_pred = cross_entropy(logits_pred, best_target, scratch=q_pred)
    stats.update(loss_target=loss_target.detach(), loss_pred=loss_pred.detach())
    return loss_target + loss_pred, stats


def row_argmax(scores: torch.Tensor) -> torch.Tensor:
    """[M] index of each row's first maximum: `scores.argmax(-1)`, which max(-1) finds in about half
    the time on the CPU ([2816, 3000] fp32: 10 ms against 21 ms)."""
    return scores.max(dim=-1).indices


def _score_stats(logits: torch.Tensor, side: str) -> Dict[str, torch.Tensor]:
    """What the model itself prefers, before Sinkhorn rebalances it: prototypes hit by the argmax of
    the raw scores and the entropy of that usage (nats). Sinkhorn keeps the codes balanced even when
    nearly every token scores highest on one prototype; this shows it."""
    usage = prototype_counts(logits)  # [K]
    freq = usage / usage.sum()
    return {f"score_protos_used_{side}": (usage > 0).sum(),
            f"score_usage_entropy_{side}": torch.special.entr(freq).sum()}


def prototype_counts(scores: torch.Tensor) -> torch.Tensor:
    """[K] float: how many rows of [M, K] `scores` have their argmax at each prototype."""
    return code_counts(row_argmax(scores), scores.shape[1])


def code_counts(best: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """[K] float counts of the [M] prototype indices `best`.

    A fixed-size scatter_add_, not bincount(minlength=K), whose output size depends on the data
    (a host sync on CUDA)."""
    return torch.zeros(num_prototypes, dtype=torch.float32, device=best.device).scatter_add_(
        0, best, torch.ones_like(best, dtype=torch.float32))


def _code_stats(q: torch.Tensor, best: torch.Tensor, side: str, max_rows: int = 1024) -> Dict[str, torch.Tensor]:
    """Collapse monitors of [M, K] codes `q` with row argmax `best`: prototypes hit by some code,
    entropy of their usage (nats), and the mean entropy of a token's code, estimated on at most
    `max_rows` evenly spaced tokens."""
    usage = code_counts(best, q.shape[1])  # [K]
    freq = usage / usage.sum()
    sample = q[::max(1, -(-q.shape[0] // max_rows))]  # [<=max_rows, K], every ceil(M / max_rows)-th token
    return {
        f"protos_used_{side}": (usage > 0).sum(),
        f"usage_entropy_{side}": torch.special.entr(freq).sum(),
        f"code_entropy_{side}": torch.special.entr(sample).sum(-1).mean(),
    }


def compute_loss(model: nn.Module, objective: Objective, videos: torch.Tensor,
                 bool_masked_pos: Union[torch.Tensor, MaskIndex], teacher: Optional[nn.Module] = None,
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The pretraining loss of one batch.

    Args:
        model: a PretrainVisionTransformer, possibly wrapped (DDP, torch.compile).
        videos: [B, 3, T, H, W] ImageNet-normalised float clips.
        bool_masked_pos: [B, N] bool, True = masked, the same count per clip; or its `MaskIndex`
            built on the host (then nothing here waits for the device).
        teacher: frozen image model for dino_* targets ([F, 3, H, W] -> [F, h*w, C]).
    Returns:
        (loss, stats): stats are detached device tensors (no host sync here).
    """
    if not isinstance(bool_masked_pos, MaskIndex):
        bool_masked_pos = MaskIndex.of(bool_masked_pos.flatten(1).to(torch.bool))  # once for the whole batch
    tubes = patchify(videos, objective.tubelet_size, objective.patch_size)  # [B, N, P, C]
    targets = objective.targets(videos, tubes, bool_masked_pos, teacher)
    out = model(videos, bool_masked_pos, targets, tubes, temperature=objective.temperature)
    if objective.loss_func == "L2":
        loss = F.mse_loss(out.pred.float(), targets)
        return loss, {"loss": loss.detach()}
    loss, stats = swapped_prediction(out.logits_target, out.logits_pred, objective)
    stats["loss"] = loss.detach()
    return loss, stats


def train_one_epoch(model: nn.Module, loader: Iterable, update, schedule, objective: Objective, *,
                    device: torch.device, epoch: int, start_step: int, accum_iter: int = 1,
                    teacher: Optional[nn.Module] = None, log_every: int = 20, skip_nonfinite: int = 0,
                    tracker=None, nonfinite=None) -> Iterator[StepDone]:
    """One pretraining epoch, yielding after every optimiser step (see `training_loop.train_steps`)."""

    def loss_fn(batch):
        index = MaskIndex(batch["visible_index"], batch["masked_index"])
        return compute_loss(model, objective, batch["video"], index, teacher=teacher)

    return train_steps(model, HostMaskIndex(loader), update, schedule, loss_fn, device=device, epoch=epoch,
                       start_step=start_step, accum_iter=accum_iter, log_every=log_every,
                       skip_nonfinite=skip_nonfinite, tracker=tracker, nonfinite=nonfinite)


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
