"""The SIGMA / VideoMAE pretraining objective, read top to bottom.

    clip ──patchify──> tubes ──(masked, per-tube normalised)──> targets ──projection──> logits_target
      └──encoder(visible)──> decoder(mask tokens) ──> pred ─────────────────────────> logits_pred
    Sinkhorn codes of each side; each side's scores predict the other side's codes.

The stages, in the order `compute_loss` runs them (M = B * N_mask masked tubes, K prototypes):
    1. targets            `Objective.targets`: `pixel_targets` / `teacher_targets`    [B, N_mask, D_t]
    2. prediction         the model's decoder on the mask tokens                      [B, N_mask, D]
    3. projection,        the model's `project` and `prototype_logits`, both inside    [M, K] per side
       prototype scores   its one forward call (as DDP needs; SWAV only)
    4. Sinkhorn codes     `Objective.codes`, hard codes by `row_argmax`                [M, K], [M]
    5. the loss           `swapped_prediction` (SWAV) or `l2_loss` (L2)                scalar

`Objective` holds the loss and its settings (built once by the driver); `train_one_epoch` yields
after every optimiser step (training_loop.train_steps). The fused cross-entropy, kept [M, K] buffers
and the host-side mask index that make this fast on the CPU live in objective_kernels.py.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_finetune import MaskIndex, patchify, take_tokens
from objective_kernels import HostMaskIndex, centred_std, cross_entropy, kept_buffer
from sinkhorn import needs_log_domain, sinkhorn_knopp
from training_loop import StepDone, train_steps


# ── 1. Targets ───────────────────────────────────────────────────────────────────────────────────

def normalize_per_group(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(x - mean) / (unbiased std + 1e-6) along `dim`, the official target normalisation.

    Returns x's shape (a strided view: `dim` is innermost in memory)."""
    centred, _, std = centred_std(x, dim)
    return centred.div_(std.add_(1e-6)).movedim(-1, dim)


def denormalize_like(x: torch.Tensor, reference: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `normalize_per_group` with the statistics of `reference` (e.g. a pixel
    prediction mapped back with its tube's true mean and std, as VideoMAE's visualisation)."""
    _, mean, std = centred_std(reference, dim)
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


# ── The objective's settings, its targets (1) and its Sinkhorn codes (4) ─────────────────────────

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
    # Code matrices kept from step to step (`codes(..., reuse=name)`; why: objective_kernels). A step
    # still holding one for its backward when the next forward rewrites it fails loudly (autograd's
    # version check on the saved softmax).
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
        """Sinkhorn codes: [M, K] logits = cosines / temperature -> [M, K] fp32 codes, each row a
        distribution over prototypes, every prototype used equally over the M tokens (epsilon
        rescaled to the logits' scale).

        reuse: write them into this objective's kept buffer of that name (objective_kernels.kept_buffer),
        which the previous step's codes of that name occupied.
        """
        out = None if reuse is None else kept_buffer(self._buffers, reuse, logits.shape, torch.float32, logits.device)
        return sinkhorn_knopp(logits, self.sinkhorn_eps / self.temperature, self.sinkhorn_iterations,
                              log_domain=self.log_domain, out=out)

    @torch.no_grad()
    def targets(self, videos: torch.Tensor, tubes: torch.Tensor, index: MaskIndex,
                teacher: Optional[nn.Module] = None) -> torch.Tensor:
        """[B, N_mask, D_t] targets of the masked tubes: pixels (pixel, mlp; D_t = P*C) or teacher
        features (dino_*; D_t = C_teacher).

        Args:
            videos: [B, 3, T, H, W]; tubes: their `patchify`, [B, N, P, C]; index: the batch's mask.
        """
        if self.target_type in ("pixel", "mlp"):
            return pixel_targets(tubes, index, self.normalize_target)  # [B, N_mask, P*C]
        if teacher is None:
            raise ValueError(f"target_type {self.target_type!r} needs a teacher model")
        return teacher_targets(teacher, videos, index, self.tubelet_size, self.normalize_target)


# ── 4.-5. Sinkhorn codes and the loss ────────────────────────────────────────────────────────────

def l2_loss(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VideoMAE's loss: mean squared error of the decoder's prediction [B, N_mask, D_t] (in fp32)
    against the targets [B, N_mask, D_t]."""
    return F.mse_loss(pred.float(), targets)


def row_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Hard codes: [M, K] -> [M] index of each row's first maximum, `scores.argmax(-1)`, which
    max(-1) finds in about half the time on the CPU ([2816, 3000] fp32: 10 ms against 21 ms)."""
    return scores.max(dim=-1).indices


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


# ── Collapse monitors (logged, not trained on) ───────────────────────────────────────────────────

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
    # 1. targets of the masked tubes
    targets = objective.targets(videos, tubes, bool_masked_pos, teacher)  # [B, N_mask, D_t]
    # 2.-3. the decoder's prediction; SWAV: the projection of the targets and both sides' prototype scores
    out = model(videos, bool_masked_pos, targets, tubes, temperature=objective.temperature)
    if objective.loss_func == "L2":
        loss = l2_loss(out.pred, targets)  # 5. pred [B, N_mask, D_t] against the targets
        return loss, {"loss": loss.detach()}
    # 4.-5. Sinkhorn codes of each side's scores [B*N_mask, K]; each side predicts the other's
    loss, stats = swapped_prediction(out.logits_target, out.logits_pred, objective)
    stats["loss"] = loss.detach()
    return loss, stats


# ── One epoch ────────────────────────────────────────────────────────────────────────────────────

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
