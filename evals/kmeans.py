"""Batched k-means in torch: k-means++ seeding, Lloyd iterations, several restarts run together.

It runs on the features' device (a GPU clusters a DAVIS clip's 400k upsampled points in well under
a second) and is what evals.segmentation and run_sigma_vis.py use; bench/bench_kmeans.py compares it with
scikit-learn's KMeans on the CPU (speed and inertia, BENCHMARKS.md).
"""
from typing import Optional, Tuple

import torch


def _sq_dists(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """Squared distances [R, N, K] of points x [N, D] to every restart's centres [R, K, D]."""
    d = x_sq[None, :, None] - 2 * (x @ centres.transpose(1, 2)) + (centres ** 2).sum(-1)[:, None, :]
    return d.clamp_min_(0)


def kmeans_plus_plus(x: torch.Tensor, k: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds [R, K, D]: each next centre drawn with probability proportional to the squared
    distance to the nearest centre drawn so far (uniformly when every point sits on a centre)."""
    N = x.shape[0]
    x_sq = (x ** 2).sum(-1)  # [N]
    pick = torch.randint(N, (restarts,), generator=generator).to(x.device)  # [R]
    centres = [x[pick]]  # K x [R, D]
    nearest = torch.full((restarts, N), float("inf"), device=x.device)  # [R, N]
    for _ in range(1, k):
        c = centres[-1]  # [R, D]
        d = (x_sq[None] - 2 * (c @ x.T) + (c ** 2).sum(-1, keepdim=True)).clamp_min_(0)  # [R, N]
        nearest = torch.minimum(nearest, d)
        cdf = nearest.double().cumsum(1)  # [R, N]; inverse-CDF draw, one uniform per restart
        u = torch.rand(restarts, 1, generator=generator, dtype=torch.float64).to(x.device) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u)[:, 0].clamp_max_(N - 1)
        uniform = cdf[:, -1] <= 0  # every point on a centre: draw uniformly
        if uniform.any():
            pick = torch.where(uniform, torch.randint(N, (restarts,), generator=generator).to(x.device), pick)
        centres.append(x[pick])
    return torch.stack(centres, 1)


def kmeans(x: torch.Tensor, k: int, restarts: int = 5, iters: int = 50, tol: float = 1e-4, seed: int = 0,
           generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, float]:
    """Cluster points x [N, D] into k clusters; the restart with the lowest inertia wins.

    Each restart's Lloyd iterations stop once no assignment changes or its centres moved by at most
    `tol` times the mean feature variance (squared Frobenius norm: scikit-learn's KMeans criterion);
    finished restarts drop out of the batch. An emptied cluster keeps its previous centre.

    Returns:
        (labels [N] long on x's device, inertia: the winner's summed squared distance).
    """
    if k < 1 or x.shape[0] < 1:
        raise ValueError(f"kmeans needs k >= 1 and points, got k={k} and {x.shape[0]} points")
    generator = generator or torch.Generator().manual_seed(seed)
    x = x.float()
    x_sq = (x ** 2).sum(-1)  # [N]
    threshold = tol * float(x.var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    centres = kmeans_plus_plus(x, k, restarts, generator)  # [R, K, D]
    labels = torch.full((restarts, x.shape[0]), -1, dtype=torch.long, device=x.device)  # [R, N]
    active = torch.arange(restarts, device=x.device)  # restarts still iterating
    for _ in range(iters):
        c = centres[active]  # [A, K, D]
        # |x|^2 is the same for every centre: the nearest centre minimises |c|^2 - 2 x.c
        new_labels = torch.baddbmm((c ** 2).sum(-1)[:, None, :], x.expand(len(c), -1, -1), c.transpose(1, 2),
                                   alpha=-2).argmin(-1)  # [A, N]
        sums = torch.stack([torch.zeros_like(c[0]).index_add_(0, lab, x) for lab in new_labels])  # [A, K, D]
        counts = torch.stack([torch.bincount(lab, minlength=k) for lab in new_labels])[..., None]  # [A, K, 1]
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        converged = (new_labels == labels[active]).all(1) | (((moved - c) ** 2).sum((1, 2)) <= threshold)
        labels[active], centres[active] = new_labels, moved
        active = active[~converged]
        if active.numel() == 0:
            break
    best_d, labels = _sq_dists(x, centres, x_sq).min(-1)  # [R, N]
    inertia = best_d.sum(1)  # [R]
    best = int(inertia.argmin())
    return labels[best], float(inertia[best])
