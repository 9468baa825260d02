"""Sinkhorn-Knopp at SIGMA sizes: our scaling-vector iteration against the classic matrix rewrite.

`sinkhorn.sinkhorn_knopp` iterates the two scaling vectors over a read-only exp(S/eps) kernel:
one matrix-vector product per half-round. The classic iteration (SwAV, official SIGMA
`utils.find_optimal_assignment` + `utils.sinkhorn`) rewrites the whole [K, N] matrix twice per
round: about 6 passes over N x K floats per round, 70 for SIGMA's 10 rounds. Both compute the
same codes; this script times both on cosine scores in fp32 and prints one JSON line per
(N, K): median seconds, max |codes difference|, argmax agreement and marginal errors.

N is the number of masked tubes of a step: 1411 per 16x224x224 clip at mask ratio 0.9 (SIGMA
ViT-S trains with 16 clips per GPU, ViT-B with 32), K the number of prototypes (SIGMA: 3000).

    python bench/bench_sinkhorn.py --device cuda --n 22576 45152 --k 3000
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sinkhorn import sinkhorn_knopp  # noqa: E402

logger = logging.getLogger("bench_sinkhorn")

TUBES_PER_CLIP = 1411  # int(0.9 * 14 * 14) = 176 masked tubes per slot x 8 slots, rounded as tube_mask


@torch.no_grad()
def classic_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int, group=None,
                     log_domain: Optional[bool] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The official SIGMA Sinkhorn (single process), step for step: the reference for `sinkhorn_knopp`.

    Same signature as `sinkhorn.sinkhorn_knopp` so that it can stand in for it; `group` and
    `log_domain` are ignored (one process, exp domain without stabilisation, as the original);
    `out`, when given, receives a copy of the codes (the original allocates its own).
    Args:
        scores: [N, K] token-prototype similarities.
    Returns:
        [N, K] float32 codes, rows summing to 1 (a transposed view, as the original).
    """
    with torch.autocast(scores.device.type, enabled=False):
        q = torch.exp(scores.float() / epsilon).t()  # [K, N]
        q = q.detach().clone()  # the original copies its input once more
        q /= torch.sum(q)
        k, n = q.shape
        r = torch.ones(k, device=q.device) / k  # prototype marginal
        c = torch.ones(n, device=q.device) / n  # token marginal
        for _ in range(iterations):
            u = torch.sum(q, dim=1)  # [K] pass 1 (read)
            q *= (r / u).unsqueeze(1)  # pass 2 (read + write): prototype marginal
            q *= (c / torch.sum(q, dim=0)).unsqueeze(0)  # passes 3-4: token marginal
        codes = (q / torch.sum(q, dim=0, keepdim=True)).t().float()
        return codes if out is None else out.copy_(codes)


def cosine_scores(n: int, k: int, dim: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """[N, K] cosines of clustered unit features against random unit prototypes.

    Each token is a noisy copy of one of the first K/4 prototypes (cosine about 0.7 to it, about
    0 to the others), so the scores are peaked and unbalanced, as in a half-collapsed run, and
    Sinkhorn has real balancing to do.
    """
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(k, dim, generator=g), dim=1)  # [K, D]
    owner = torch.randint(0, max(1, k // 4), (n,), generator=g)  # [N]
    x = F.normalize(c[owner] + torch.randn(n, dim, generator=g) / dim ** 0.5, dim=1)  # [N, D]
    return (x.to(device) @ c.to(device).t()).contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _extra_peak_mb(fn: Callable[[], torch.Tensor], device: torch.device) -> Optional[float]:
    """CUDA memory a call allocates on top of what is already allocated (its output included)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2 ** 20, 1)


def marginal_errors(q: torch.Tensor) -> Dict[str, float]:
    """Deviation from the two marginals: prototype columns should hold N/K tokens, token rows sum to 1."""
    n, k = q.shape
    cols = q.double().sum(0)  # [K]
    rows = q.double().sum(1)  # [N]
    return {"proto_marginal_rel_err": float(((cols - n / k).abs() / (n / k)).max()),
            "token_marginal_err": float((rows - 1).abs().max())}


def run_case(n: int, k: int, *, epsilon: float, iterations: int, dim: int, device: torch.device,
             warmup: int, iters: int) -> Dict[str, object]:
    """Time both implementations on one [N, K] score matrix and compare their codes."""
    scores = cosine_scores(n, k, dim, device)
    ours = lambda: sinkhorn_knopp(scores, epsilon, iterations, log_domain=False)  # noqa: E731
    classic = lambda: classic_sinkhorn(scores, epsilon, iterations)  # noqa: E731
    q_ours, q_classic = ours(), classic()
    diff = float((q_ours - q_classic).abs().max())
    agree = float((q_ours.argmax(1) == q_classic.argmax(1)).float().mean())
    err_ours, err_classic = marginal_errors(q_ours), marginal_errors(q_classic)
    del q_ours, q_classic
    t_ours = statistics.median(time_fn(ours, device, warmup, iters))
    t_classic = statistics.median(time_fn(classic, device, warmup, iters))
    return {
        "n": n, "k": k, "epsilon": epsilon, "iterations": iterations, "dtype": "fp32", "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "scaling_median_s": round(t_ours, 5), "classic_median_s": round(t_classic, 5),
        "speedup": round(t_classic / t_ours, 2),
        "scaling_extra_mem_mb": _extra_peak_mb(ours, device), "classic_extra_mem_mb": _extra_peak_mb(classic, device),
        "max_abs_diff": diff, "argmax_agreement": agree,
        **{f"scaling_{key}": v for key, v in err_ours.items()},
        **{f"classic_{key}": v for key, v in err_classic.items()},
    }


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("Sinkhorn-Knopp benchmark")
    p.add_argument("--n", type=int, nargs="+", default=[2 * TUBES_PER_CLIP, 8 * TUBES_PER_CLIP, 16 * TUBES_PER_CLIP],
                   help="tokens (masked tubes of a step: batch x 1411)")
    p.add_argument("--k", type=int, nargs="+", default=[256, 1024, 3000, 8192], help="prototypes")
    p.add_argument("--epsilon", type=float, default=0.05, help="on the cosine scale, as SIGMA's --sinkhorn_eps")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--dim", type=int, default=256, help="feature width of the random cosines")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for n in args.n:
        for k in args.k:
            logger.info("N=%d K=%d", n, k)
            record = run_case(n, k, epsilon=args.epsilon, iterations=args.iterations, dim=args.dim,
                              device=device, warmup=args.warmup, iters=args.iters)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(get_args())
