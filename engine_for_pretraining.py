"""The SIGMA / VideoMAE pretraining objective, read top to bottom.

    clip ──patchify──> tubes ──(masked, per-tube normalised)──> targets ──projection──> scores_target
      └──encoder(visible)──> decoder(mask tokens) ──> pred ─────────────────────────> scores_pred
    Sinkhorn codes of each side; each side's scores predict the other side's codes.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_finetune import patchify
from sinkhorn import MAX_EXP_SPREAD, sinkhorn_knopp


def normalize_per_group(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(x - mean) / (unbiased std + 1e-6) along `dim`, the official target normalisation."""
    return (x - x.mean(dim=dim, keepdim=True)) / (x.var(dim=dim, unbiased=True, keepdim=True).sqrt() + 1e-6)


def pixel_targets(tubes: torch.Tensor, bool_masked_pos: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Pixel targets of the masked tubes.

    Args:
        tubes: [B, N, P, C] ImageNet-normalised tubes from `patchify`.
        bool_masked_pos: [B, N] bool.
    Returns:
        [B, N_mask, P*C]: pixels in [0, 1], normalised per tube and channel when `normalize`.
    """
    B = tubes.shape[0]
    mean = tubes.new_tensor(IMAGENET_DEFAULT_MEAN)
    std = tubes.new_tensor(IMAGENET_DEFAULT_STD)
    masked = tubes[bool_masked_pos] * std + mean  # [B*N_mask, P, C] in [0, 1]
    if normalize:
        masked = normalize_per_group(masked, dim=-2)
    return masked.reshape(B, -1, masked.shape[-2] * masked.shape[-1])


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
    return feats[bool_masked_pos].reshape(B, -1, feats.shape[-1])


def swapped_prediction(scores_target: torch.Tensor, scores_pred: torch.Tensor, epsilon: float, iterations: int,
                       temperature: float = 0.1, soft_codes: bool = False, log_domain: Optional[bool] = None,
                       ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """SIGMA's symmetric cluster prediction.

    Args:
        scores_target: [M, K] projection (target side) scores; trains projection and prototypes.
        scores_pred: [M, K] decoder scores against detached prototypes.
    Returns:
        loss = CE(scores_target / T, codes_pred) + CE(scores_pred / T, codes_target), with hard
        (argmax) Sinkhorn codes as official, or the codes themselves when `soft_codes` (SwAV).
    """
    q_target = sinkhorn_knopp(scores_target, epsilon, iterations, log_domain=log_domain)  # [M, K]
    q_pred = sinkhorn_knopp(scores_pred, epsilon, iterations, log_domain=log_domain)  # [M, K]
    logp_target = F.log_softmax(scores_target.float() / temperature, dim=-1)  # [M, K]
    logp_pred = F.log_softmax(scores_pred.float() / temperature, dim=-1)  # [M, K]
    if soft_codes:
        loss_target = -(q_pred * logp_target).sum(-1).mean()
        loss_pred = -(q_target * logp_pred).sum(-1).mean()
    else:
        loss_target = F.nll_loss(logp_target, q_pred.argmax(-1))
        loss_pred = F.nll_loss(logp_pred, q_target.argmax(-1))
    stats = {"loss_target": loss_target.detach(), "loss_pred": loss_pred.detach()}
    stats.update(_code_stats(q_target, "target"))
    stats.update(_code_stats(q_pred, "pred"))
    return loss_target + loss_pred, stats


def _code_stats(q: torch.Tensor, side: str) -> Dict[str, torch.Tensor]:
    """Collapse monitors: prototypes hit by some argmax code, entropy of their usage, mean code entropy."""
    usage = torch.bincount(q.argmax(-1), minlength=q.shape[1]).float()  # [K]
    freq = usage / usage.sum()
    return {
        f"protos_used_{side}": (usage > 0).sum(),
        f"usage_entropy_{side}": -(freq * freq.clamp_min(1e-12).log()).sum(),
        f"code_entropy_{side}": -(q * q.clamp_min(1e-12).log()).sum(-1).mean(),
    }


def compute_loss(model: nn.Module, videos: torch.Tensor, bool_masked_pos: torch.Tensor,
                 teacher: Optional[nn.Module] = None, normalize_target: bool = True,
                 temperature: float = 0.1, soft_codes: bool = False,
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The pretraining loss of one batch.

    Args:
        model: a PretrainVisionTransformer, possibly wrapped (DDP, torch.compile).
        videos: [B, 3, T, H, W] ImageNet-normalised float clips.
        bool_masked_pos: [B, N] bool, True = masked, the same count per clip.
        teacher: frozen image model for dino_* targets ([F, 3, H, W] -> [F, h*w, C]).
        normalize_target: per-tube (pixel, mlp) or per-clip-channel (dino) target normalisation.
        temperature: softmax temperature of the swapped prediction.
        soft_codes: train towards the soft Sinkhorn codes instead of their argmax.
    Returns:
        (loss, stats): stats are detached device tensors (no host sync here).
    """
    core = getattr(model, "module", model)
    core = getattr(core, "_orig_mod", core)
    bool_masked_pos = bool_masked_pos.flatten(1).to(torch.bool)
    tubes = patchify(videos, core.tubelet_size, core.patch_size)  # [B, N, P, C]
    with torch.no_grad():
        if core.target_type in ("pixel", "mlp"):
            targets = pixel_targets(tubes, bool_masked_pos, normalize_target)  # [B, N_mask, P*C]
        else:
            if teacher is None:
                raise ValueError(f"target_type {core.target_type!r} needs a teacher model")
            targets = teacher_targets(teacher, videos, bool_masked_pos, core.tubelet_size, normalize_target)
    out = model(videos, bool_masked_pos, targets, tubes)
    if core.loss_func == "L2":
        loss = F.mse_loss(out.pred.float(), targets)
        return loss, {"loss": loss.detach()}
    # Scores are cosines (spread <= 2): the exp-domain Sinkhorn is exact unless eps is tiny.
    log_domain = 2.0 / core.sinkhorn_eps > MAX_EXP_SPREAD
    loss, stats = swapped_prediction(out.scores_target, out.scores_pred, core.sinkhorn_eps,
                                     core.sinkhorn_iterations, temperature, soft_codes, log_domain)
    stats["loss"] = loss.detach()
    return loss, stats
