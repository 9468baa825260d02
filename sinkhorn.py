"""Sinkhorn-Knopp: balanced soft assignment of tokens to prototypes (SwAV / SIGMA).

Given scores S [N, K] of N tokens against K prototypes, find Q = diag(b) exp(S/eps) diag(a)
(written here as tokens x prototypes) whose prototype marginals are uniform over the *global*
batch, then return Q with every token's row normalised to 1. Iterating the scaling vectors
a [K] and b [N] gives exactly the classic SwAV/SIGMA iteration, which rewrites the whole
matrix twice per round; here each half-round is one matrix-vector product over exp(S/eps),
which is read, never rewritten, until the final normalisation.

Two numerical paths with the same result:
- exp domain (fast): exp((S - max_tokens S) / eps); exact whenever the score spread / eps stays
  inside fp32's exponent range (always so for cosine scores with eps >= 2/75 ~ 0.027);
- log domain: the same iteration on log a, log b with logsumexp, finite for any eps (e.g. 0.005
  with near-aligned features, where exp(S/eps) overflows fp32).
"""
import math
from typing import Optional

import torch
import torch.distributed as dist

# exp(-75) ~ 2.7e-33: with the spread below this every kernel entry and scaling vector stays a
# normal fp32 number, so the exp-domain path is exact.
MAX_EXP_SPREAD = 75.0


def needs_log_domain(cosine_eps: float) -> bool:
    """Whether cosine scores (spread at most 2) need the log-domain path at epsilon `cosine_eps`:
    the exp-domain path is exact unless 2 / eps exceeds MAX_EXP_SPREAD (no data check needed)."""
    return 2.0 / cosine_eps > MAX_EXP_SPREAD


def _world(group: Optional[dist.ProcessGroup]) -> Optional[dist.ProcessGroup]:
    """The group to reduce over, or None when running as one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(t, op=op, group=group)
    return t


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int,
                   group: Optional[dist.ProcessGroup] = None,
                   log_domain: Optional[bool] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Equipartitioned codes for `scores`, balanced over all ranks of `group`.

    Args:
        scores: [N, K] similarities of this rank's N tokens to K prototypes, any float dtype.
        epsilon: entropic regularisation (SIGMA: 0.03-0.05); smaller is closer to hard assignment.
        iterations: normalisation rounds (prototype marginal, then token marginal), >= 1.
        group: process group whose tokens share the prototype budget; default the world group
            when torch.distributed is initialised. Each rank then gets its rows of the result
            computed on the concatenated batch.
        log_domain: force (True) or forbid (False) the log-domain path. None decides per call
            from the global score spread, which costs one device-to-host sync; callers that know
            their scores are bounded (cosines: spread <= 2) should decide statically instead.
        out: optional [N, K] float32 buffer for the codes (its contents are overwritten), e.g. one
            kept from the previous step, so that no fresh N x K buffer has to be faulted in.
    Returns:
        [N, K] float32 codes (`out` when given), no gradient; each row sums to 1.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, K], got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"need epsilon > 0 and iterations >= 1, got {epsilon}, {iterations}")
    if out is not None and (out.shape != scores.shape or out.dtype != torch.float32 or out.device != scores.device):
        raise ValueError(f"out must be a {tuple(scores.shape)} float32 tensor on {scores.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    group = _world(group)
    with torch.autocast(scores.device.type, enabled=False):  # all arithmetic in fp32
        # [N, K], the only N x K buffer: one pass for fp32 scores (a copy, then the division, else)
        if scores.dtype == torch.float32:
            logits = torch.div(scores, epsilon, out=out)
        else:
            logits = (scores.float() if out is None else out.copy_(scores)).div_(epsilon)
        col_max = _all_reduce(logits.amax(dim=0), dist.ReduceOp.MAX, group)  # [K]
        if log_domain is None:
            low = _all_reduce(logits.amin().reshape(1), dist.ReduceOp.MIN, group)
            log_domain = bool(col_max.max() - low > MAX_EXP_SPREAD)
        # Every token of the global batch carries the same mass, whatever its rank's shard size.
        # (A device tensor: no host sync.)
        world_tokens = _all_reduce(torch.full((), float(logits.shape[0]), device=logits.device),
                                   dist.ReduceOp.SUM, group)
        # Target marginals: each prototype gets 1/K of the mass, each token 1/world_tokens.
        proto_mass, token_mass = 1.0 / logits.shape[1], 1.0 / world_tokens
        if log_domain:
            codes = _sinkhorn_log(logits, proto_mass, token_mass, iterations, group)
            return codes if out is None else out.copy_(codes)
        return _sinkhorn_exp(logits, col_max, proto_mass, token_mass, iterations, group)


def _sinkhorn_exp(logits: torch.Tensor, col_max: torch.Tensor, proto_mass: float, token_mass: torch.Tensor,
                  iterations: int, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    # Subtracting a per-prototype constant is absorbed exactly by the prototype scaling a.
    kernel = logits.sub_(col_max).exp_()  # [N, K], entries in (0, 1]
    b = torch.ones(kernel.shape[0], device=kernel.device)  # [N] token scaling
    for _ in range(iterations):
        # Prototype marginal: every prototype receives proto_mass of the global mass.
        a = proto_mass / _all_reduce(torch.mv(kernel.t(), b), dist.ReduceOp.SUM, group)  # [K]
        # Token marginal: every token carries token_mass (its own rows: no reduction needed).
        row = torch.mv(kernel, a)  # [N]
        b = token_mass / row
    # Final rows: Q_nk = a_k kernel_nk / sum_k' a_k' kernel_nk' (b cancels in the row norm).
    return kernel.mul_(a).div_(row.unsqueeze(1))


def _sinkhorn_log(logits: torch.Tensor, proto_mass: float, token_mass: torch.Tensor, iterations: int,
                  group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    log_b = torch.zeros(logits.shape[0], device=logits.device)  # [N]
    for _ in range(iterations):
        # Prototype marginal: log a_k = log(proto_mass) - logsumexp_n(logits_nk + log b_n) (global).
        shifted = logits + log_b.unsqueeze(1)  # [N, K]
        top = _all_reduce(shifted.amax(dim=0), dist.ReduceOp.MAX, group)  # [K]
        mass = _all_reduce(shifted.sub_(top).exp_().sum(dim=0), dist.ReduceOp.SUM, group)  # [K]
        log_a = math.log(proto_mass) - top - mass.log()  # [K]
        # Token marginal: log b_n = log(token_mass) - logsumexp_k(logits_nk + log a_k) (local).
        log_b = token_mass.log() - torch.logsumexp(logits + log_a, dim=1)  # [N]
    return torch.softmax(logits.add_(log_a), dim=1)
