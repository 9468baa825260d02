"""Batched k-means in torch: k-means++ seeding, Lloyd iterations, several restarts run together.

It runs on the features' device (a GPU clusters a DAVIS clip's 400k upsampled points in well under
a second) and is what eval_segmentation.py uses; bench/bench_kmeans.py compares it with
scikit-learn's KMeans on the CPU (speed and inertia, BENCHMARKS.md).
"""
from typing import Optional, Tuple

import torch


def _sq_dists(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """Squared distances [R, N, K] of points x [N, D] to every restart's centres [R, K, D]."""
    d = x_sq[None, :, None] - 2 * torch.einsum("nd,rkd->rnk", x, centres) + (centres ** 2).sum(-1)[:, None, :]
    return d.clamp_min_(0)


def kmeans_plus_plus(x: torch.Tensor, k: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds [R, K, D]: each next centre drawn with probability proportional to the squared
    distance to the nearest centre drawn so far (uniformly when every point sits on a centre)."""
    N = x.shape[0]
    x_sq = (x ** 2).sum(-1)  # [N]
    first = torch.randint(N, (restarts,), generator=generator, device="cpu").to(x.device)
    centres = [x[first]]  # K x [R, D]
    nearest = _sq_dists(x, centres[0][:, None], x_sq)[..., 0]  # [R, N]
    for _ in range(1, k):
        weights = nearest.double()
        flat = weights.sum(1, keepdim=True) <= 0  # all points on centres: draw uniformly
        weights = torch.where(flat, torch.ones_like(weights), weights)
        pick = torch.multinomial(weights.cpu(), 1, generator=generator).to(x.device)[:, 0]  # [R]
        centres.append(x[pick])
        nearest = torch.minimum(nearest, _sq_dists(x, centres[-1][:, None], x_sq)[..., 0])
    return torch.stack(centres, 1)


def kmeans(x: torch.Tensor, k: int, restarts: int = 5, iters: int = 50, seed: int = 0,
           generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, float]:
    """Cluster points x [N, D] into k clusters; the restart with the lowest inertia wins.

    Lloyd iterations stop early once no restart changes an assignment. An emptied cluster keeps
    its previous centre.

    Returns:
        (labels [N] long on x's device, inertia: the winner's summed squared distance).
    """
    if k < 1 or x.shape[0] < 1:
        raise ValueError(f"kmeans needs k >= 1 and points, got k={k} and {x.shape[0]} points")
    generator = generator or torch.Generator().manual_seed(seed)
    x = x.float()
    x_sq = (x ** 2).sum(-1)  # [N]
    centres = kmeans_plus_plus(x, k, restarts, generator)  # [R, K, D]
    labels = None
    for _ in range(iters):
        new_labels = _sq_dists(x, centres, x_sq).argmin(-1)  # [R, N]
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(centres).scatter_add_(1, labels[..., None].expand(-1, -1, x.shape[1]),
                                                      x.expand(restarts, -1, -1))  # [R, K, D]
        counts = torch.zeros(centres.shape[:2], device=x.device).scatter_add_(
            1, labels, torch.ones_like(labels, dtype=torch.float))  # [R, K]
        centres = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centres)
    d = _sq_dists(x, centres, x_sq)  # [R, N, K]
    best_d, labels = d.min(-1)  # [R, N]
    inertia = best_d.sum(1)  # [R]
    best = int(inertia.argmin())
    return labels[best], float(inertia[best])
