"""Tests for sinkhorn.sinkhorn_knopp (balanced SwAV/SIGMA assignment)."""
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sinkhorn import sinkhorn_knopp  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Reference and helpers
# ----------------------------------------------------------------------------------------------
def classic_sinkhorn(scores: torch.Tensor, eps: float, iterations: int,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Textbook SwAV / SIGMA Sinkhorn-Knopp (no stabilisation), computed in `dtype`."""
    Q = torch.exp(scores.to(dtype) / eps).t()  # [K, N]
    K, N = Q.shape
    Q /= Q.sum()
    for _ in range(iterations):
        Q *= (1.0 / K) / Q.sum(dim=1, keepdim=True)  # rows: prototypes
        Q *= (1.0 / N) / Q.sum(dim=0, keepdim=True)  # columns: tokens
    return (Q / Q.sum(dim=0, keepdim=True)).t()  # [N, K], rows sum to 1


def cosine_scores(n: int, k: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return x @ c.t()


def aligned_scores(n: int, k: int, dim: int = 32, noise: float = 0.01, seed: int = 1) -> torch.Tensor:
    """All token features = one base vector + small noise; random prototypes."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=g)
    x = F.normalize(base + noise * torch.randn(n, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return x @ c.t()


def max_col_rel_dev(q: torch.Tensor) -> float:
    n, k = q.shape
    target = n / k
    return ((q.sum(dim=0) - target).abs() / target).max().item()


N_TOK, K_PROTO = 3000, 300


@pytest.fixture(scope="module")
def scores() -> torch.Tensor:
    return cosine_scores(N_TOK, K_PROTO)


# ----------------------------------------------------------------------------------------------
# 1. Equality with the classic iteration
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_domain", [False, True, None])
@pytest.mark.parametrize("iterations", [3, 10])
@pytest.mark.parametrize("eps", [0.05, 0.03])
def test_matches_classic_iteration(scores, eps, iterations, log_domain):
    ref = classic_sinkhorn(scores, eps, iterations)
    out = sinkhorn_knopp(scores, eps, iterations, log_domain=log_domain)
    assert out.shape == scores.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_iterations_matter(scores):
    # Guards test 1 against a degenerate reference: 3 and 10 rounds must give different codes.
    a = sinkhorn_knopp(scores, 0.05, 3)
    b = sinkhorn_knopp(scores, 0.05, 10)
    assert (a - b).abs().max().item() > 1e-4


# ----------------------------------------------------------------------------------------------
# 2. Marginals
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_domain", [False, True])
def test_rows_sum_to_one_and_columns_balanced(scores, log_domain):
    out = sinkhorn_knopp(scores, 0.05, 10, log_domain=log_domain)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(N_TOK), atol=1e-5, rtol=0)
    assert (out >= 0).all()
    # Plain softmax (no balancing) deviates by ~50% here; Sinkhorn by ~5e-5.
    assert max_col_rel_dev(out) < 1e-3
    unbalanced = torch.softmax(scores / 0.05, dim=1)
    assert max_col_rel_dev(unbalanced) > 0.1  # the tolerance above is discriminative


# ----------------------------------------------------------------------------------------------
# 3. Stability at small epsilon
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_domain", [True, None])
def test_small_eps_near_aligned_is_stable_and_balanced(log_domain):
    s = aligned_scores(N_TOK, K_PROTO)
    out = sinkhorn_knopp(s, 0.005, 10, log_domain=log_domain)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(N_TOK), atol=1e-5, rtol=0)
    assert max_col_rel_dev(out) < 1e-3
    # Also equals the classic algorithm run in float64 (which does not overflow there).
    torch.testing.assert_close(out.double(), classic_sinkhorn(s, 0.005, 10), atol=1e-5, rtol=0)
    # The naive classic iteration in float32 overflows: exp(~1 / 0.005) > fp32 max.
    naive = classic_sinkhorn(s, 0.005, 10, dtype=torch.float32)
    assert not torch.isfinite(naive).all()


def aligned_with_outliers_scores(n: int, k: int, dim: int = 32, outliers: int = 30,
                                 seed: int = 5) -> torch.Tensor:
    """Tokens and prototypes all near one base vector, plus a few tokens orthogonal-ish to all.

    At eps=0.005 the outlier tokens sit ~200 logits below every prototype's best token, so a
    plain exp kernel (even max-shifted) underflows to an all-zero row there: only the log domain
    survives.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=g)
    x = base + 0.01 * torch.randn(n, dim, generator=g)
    x[:outliers] = torch.randn(outliers, dim, generator=g) * base.norm() / dim ** 0.5
    x = F.normalize(x, dim=1)
    c = F.normalize(base + 0.01 * torch.randn(k, dim, generator=g), dim=1)
    return x @ c.t()


@pytest.mark.parametrize("log_domain", [True, None])
def test_small_eps_near_aligned_with_outliers(log_domain):
    s = aligned_with_outliers_scores(N_TOK, K_PROTO)
    out = sinkhorn_knopp(s, 0.005, 10, log_domain=log_domain)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(N_TOK), atol=1e-5, rtol=0)
    assert max_col_rel_dev(out) < 1e-3
    torch.testing.assert_close(out.double(), classic_sinkhorn(s, 0.005, 10), atol=1e-5, rtol=0)
    assert not torch.isfinite(classic_sinkhorn(s, 0.005, 10, dtype=torch.float32)).all()


@pytest.mark.parametrize("log_domain", [True, None])
def test_small_eps_random_cosines_is_finite(scores, log_domain):
    out = sinkhorn_knopp(scores, 0.005, 10, log_domain=log_domain)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(N_TOK), atol=1e-5, rtol=0)
    naive = classic_sinkhorn(scores, 0.005, 10, dtype=torch.float32)
    assert not torch.isfinite(naive).all()


# ----------------------------------------------------------------------------------------------
# 4. Low-precision inputs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input(scores, dtype):
    ref = sinkhorn_knopp(scores, 0.05, 10)
    out = sinkhorn_knopp(scores.to(dtype), 0.05, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(N_TOK), atol=1e-5, rtol=0)
    agree = (out.argmax(dim=1) == ref.argmax(dim=1)).float().mean().item()
    assert agree > 0.95
    assert (out - ref).abs().max().item() < 0.05


# ----------------------------------------------------------------------------------------------
# 5. No gradient, no in-place modification
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_domain", [False, True])
def test_no_grad_and_input_untouched(log_domain):
    s = cosine_scores(500, 50).requires_grad_(True)
    before = s.detach().clone()
    out = sinkhorn_knopp(s, 0.05, 3, log_domain=log_domain)
    assert not out.requires_grad
    assert out.grad_fn is None
    assert torch.equal(s.detach(), before)
    assert out.data_ptr() != s.data_ptr()


@pytest.mark.parametrize("log_domain", [False, True])
def test_fp32_input_not_aliased(log_domain):
    s = cosine_scores(500, 50)
    before = s.clone()
    out = sinkhorn_knopp(s, 0.05, 3, log_domain=log_domain)
    assert torch.equal(s, before)
    out.add_(1.0)  # writing into the result must not touch the input
    assert torch.equal(s, before)


@pytest.mark.parametrize("log_domain", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codes_into_a_given_buffer(log_domain, dtype):
    s = cosine_scores(500, 50).to(dtype)
    buffer = torch.full((500, 50), float("nan"))
    out = sinkhorn_knopp(s, 0.05, 3, log_domain=log_domain, out=buffer)
    assert out.data_ptr() == buffer.data_ptr()
    assert torch.equal(out, sinkhorn_knopp(s, 0.05, 3, log_domain=log_domain))


def test_out_of_another_shape_or_dtype_is_refused():
    for bad in (torch.empty(500, 51), torch.empty(500, 50, dtype=torch.float64)):
        with pytest.raises(ValueError, match="out must be a \\(500, 50\\) float32"):
            sinkhorn_knopp(cosine_scores(500, 50), 0.05, 3, out=bad)


# ----------------------------------------------------------------------------------------------
# 6. Argument validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(scores=torch.rand(2, 10, 5), epsilon=0.05, iterations=3),
    dict(scores=torch.rand(10), epsilon=0.05, iterations=3),
    dict(scores=torch.rand(10, 5), epsilon=0.0, iterations=3),
    dict(scores=torch.rand(10, 5), epsilon=-0.05, iterations=3),
    dict(scores=torch.rand(10, 5), epsilon=0.05, iterations=0),
    dict(scores=torch.rand(10, 5), epsilon=0.05, iterations=-1),
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        sinkhorn_knopp(**kwargs)


# ----------------------------------------------------------------------------------------------
# 7. Autocast
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_domain", [False, True, None])
def test_under_cpu_autocast(scores, log_domain):
    ref = sinkhorn_knopp(scores, 0.05, 10, log_domain=log_domain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sinkhorn_knopp(scores, 0.05, 10, log_domain=log_domain)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# 8. Distributed (2 gloo processes)
# ----------------------------------------------------------------------------------------------
DIST_K = 64
DIST_EPS = 0.05
DIST_ITERS = 10


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world_size: int, workdir: str, sizes) -> None:
    """Spawned worker: compute sinkhorn_knopp on this rank's shard with a gloo group."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    try:
        full = torch.load(os.path.join(workdir, "scores.pt"), weights_only=True)
        start = sum(sizes[:rank])
        shard = full[start:start + sizes[rank]].clone()
        out = {ld: sinkhorn_knopp(shard, DIST_EPS, DIST_ITERS, log_domain=ld)
               for ld in (False, True, None)}
        out["explicit_group"] = sinkhorn_knopp(shard, DIST_EPS, DIST_ITERS, group=dist.group.WORLD,
                                               log_domain=False)
        torch.save(out, os.path.join(workdir, f"out_{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_distributed(tmp_path, monkeypatch, sizes, timeout: float = 60.0):
    full = cosine_scores(sum(sizes), DIST_K, seed=3)
    torch.save(full, tmp_path / "scores.pt")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    ctx = mp.start_processes(_dist_worker, args=(len(sizes), str(tmp_path), tuple(sizes)),
                             nprocs=len(sizes), join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed sinkhorn workers did not finish within {timeout}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    outs = [torch.load(tmp_path / f"out_{r}.pt", weights_only=True) for r in range(len(sizes))]
    return full, outs


def _check_distributed(full, outs, sizes):
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    for ld in (False, True, None):
        ref = sinkhorn_knopp(full, DIST_EPS, DIST_ITERS, log_domain=ld)
        for r, (start, n) in enumerate(zip(starts, sizes)):
            got = outs[r][ld]
            assert got.shape == (n, DIST_K)
            torch.testing.assert_close(got, ref[start:start + n], atol=1e-5, rtol=0,
                                       msg=lambda m: f"rank {r}, log_domain={ld}: {m}")
            if ld is False:
                torch.testing.assert_close(outs[r]["explicit_group"], got, atol=0, rtol=0)
            # The reduction really happens: the shard alone balances differently.
            alone = sinkhorn_knopp(full[start:start + n], DIST_EPS, DIST_ITERS, log_domain=ld)
            assert (alone - got).abs().max().item() > 1e-3
    # The concatenated result is globally balanced, the per-rank pieces individually are not.
    total = torch.cat([outs[r][True] for r in range(len(sizes))])
    assert max_col_rel_dev(total) < 1e-3


@pytest.mark.slow
def test_distributed_equal_shards(tmp_path, monkeypatch):
    sizes = (600, 600)
    full, outs = _run_distributed(tmp_path, monkeypatch, sizes)
    _check_distributed(full, outs, sizes)


@pytest.mark.slow
def test_distributed_unequal_shards(tmp_path, monkeypatch):
    sizes = (700, 500)
    full, outs = _run_distributed(tmp_path, monkeypatch, sizes)
    _check_distributed(full, outs, sizes)
