"""bench/: the step and Sinkhorn benchmarks run on the CPU at tiny sizes and report sound figures."""
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import bench_pretrain_step as step_bench  # noqa: E402
import bench_sinkhorn  # noqa: E402
import engine_for_pretraining  # noqa: E402
from helpers import GRID, clips, tiny_objective, tiny_pretrain  # noqa: E402
from masking_generator import tube_mask  # noqa: E402
from sinkhorn import sinkhorn_knopp  # noqa: E402

# ViT-S on 4 frames of 32x32: a (2, 2, 2) token grid, half of it masked.
TINY = ["--device", "cpu", "--input_size", "32", "--num_frames", "4", "--num_prototypes", "16",
        "--mask_ratio", "0.5", "--threads", "1"]
STEP_FIELDS = {"model", "target_type", "precision", "batch_size", "median_step_s", "clips_per_s", "peak_mem_mb",
               "peak_mem_kind", "gflops_per_clip", "tflops", "peak_tflops", "mfu", "loss", "sdpa_backend",
               "fused_adamw", "compile", "sinkhorn", "raw"}


def _run(script, *argv):
    out = subprocess.run([sys.executable, os.path.join(BENCH, script), *argv], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def _measure(capsys, *argv):
    """One config of bench_pretrain_step in this process: its JSON record."""
    rc = step_bench.main(step_bench.get_args([*TINY, "--warmup", "0", "--iters", "1", *argv]))
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0, lines
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.slow
def test_step_bench_sweep_flops_mfu_and_breakdown():
    rows = _run("bench_pretrain_step.py", *TINY, "--sweep", "1", "2", "--breakdown", "--warmup", "1",
                "--iters", "3", "--peak_tflops", "0.5")
    assert [r["batch_size"] for r in rows] == [1, 2]
    for r in rows:
        assert STEP_FIELDS <= set(r), STEP_FIELDS - set(r)
        assert r["median_step_s"] > 0 and r["peak_mem_mb"] > 0 and r["gflops_per_clip"] > 0
        # The unrounded figures obey the definitions exactly; the rounded fields are their roundings.
        # (Comparing two independently rounded fields fails whenever one lands on the other side of a
        # rounding boundary: 0.0079 against 0.0078 from tflops 0.00392.)
        raw = r["raw"]
        assert raw["tflops"] == pytest.approx(raw["flops_per_step"] / raw["median_step_s"] / 1e12, rel=1e-12)
        assert raw["mfu"] == pytest.approx(raw["tflops"] / 0.5, rel=1e-12)
        assert r["median_step_s"] == round(raw["median_step_s"], 5)
        assert r["clips_per_s"] == round(r["batch_size"] / raw["median_step_s"], 3)
        assert r["gflops_per_clip"] == round(raw["flops_per_step"] / r["batch_size"] / 1e9, 3)
        assert r["tflops"] == round(raw["tflops"], 4) and r["mfu"] == round(raw["mfu"], 4)
        stages = r["breakdown"]
        assert list(stages) == list(step_bench.STAGES)
        assert stages["teacher"] == 0
        for name in ("targets", "encoder", "decoder", "projection", "sinkhorn", "loss", "backward", "optimizer"):
            assert stages[name] > 0, f"stage {name} was never marked"
        steps = r["breakdown_steps"]
        assert len(steps) == 3 and all(list(d) == list(step_bench.STAGES) for d in steps)
        for name in step_bench.STAGES:
            assert stages[name] == round(statistics.median(d[name] for d in steps), 5)
        assert r["breakdown_total_s"] == round(statistics.median(sum(d.values()) for d in steps), 5)
        # Stages cover the whole step: each marked step's stages add up to that same step timed whole
        # (the host clock around it; only the Timeline set-up and the call itself fall outside the
        # marks). Timings of different steps are not compared: on a shared machine they vary 2x.
        for d, wall in zip(steps, r["breakdown_wall_s"], strict=True):
            assert 0.9 * wall < sum(d.values()) <= wall
    # Every matmul is per clip or per token: FLOPs per clip do not depend on the batch.
    assert rows[0]["raw"]["flops_per_step"] * 2 == pytest.approx(rows[1]["raw"]["flops_per_step"], rel=1e-3)


def test_cpu_attention_flops_are_counted():
    q, k, v = (torch.randn(2, 3, 64, 16, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False, custom_mapping=step_bench.CPU_ATTENTION_FLOPS) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    bhnnd = 2 * 3 * 64 * 64 * 16
    # forward: Q K^T and P V; backward: recomputed scores, dP, dV, dQ, dK; 2 FLOPs per multiply-add.
    assert counter.get_total_flops() == 2 * bhnnd * (2 + 5)


@pytest.mark.slow
def test_sinkhorn_bench_classic_agrees_with_scaling():
    rows = _run("bench_sinkhorn.py", "--device", "cpu", "--n", "300", "1000", "--k", "16", "64", "--iters", "1",
                "--warmup", "0", "--threads", "1")
    assert [(r["n"], r["k"]) for r in rows] == [(300, 16), (300, 64), (1000, 16), (1000, 64)]
    for r in rows:
        assert r["scaling_median_s"] > 0 and r["classic_median_s"] > 0
        assert r["max_abs_diff"] < 1e-5 and r["argmax_agreement"] >= 0.999
        assert r["scaling_token_marginal_err"] < 1e-5 and r["classic_token_marginal_err"] < 1e-5
        # The same iteration: the same distance from the prototype marginal after 10 rounds.
        assert r["scaling_proto_marginal_rel_err"] == pytest.approx(r["classic_proto_marginal_rel_err"],
                                                                    rel=1e-2, abs=1e-5)


def test_classic_sinkhorn_is_the_reference_iteration():
    scores = bench_sinkhorn.cosine_scores(500, 40, 32, torch.device("cpu"))
    eps, iters = 0.05, 3
    q = torch.exp(scores.double() / eps)  # the textbook iteration in float64, [N, K]
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(0, keepdim=True) * 40  # prototype marginal 1/K
        q /= q.sum(1, keepdim=True) * 500  # token marginal 1/N
    expected = (q / q.sum(1, keepdim=True)).float()
    torch.testing.assert_close(bench_sinkhorn.classic_sinkhorn(scores, eps, iters), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sinkhorn_knopp(scores, eps, iters), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_swap_reaches_the_engine():
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return bench_sinkhorn.classic_sinkhorn(*args, **kwargs)

    model = tiny_pretrain("mlp", "SWAV")
    with step_bench.sinkhorn_as(counting):
        engine_for_pretraining.compute_loss(model, tiny_objective(model), clips(), tube_mask(2, GRID, 0.5))
    assert len(calls) == 2  # codes of both sides
    assert engine_for_pretraining.sinkhorn_knopp is sinkhorn_knopp


@pytest.mark.slow
def test_step_bench_fast_path_variants_agree(capsys):
    scaling = _measure(capsys)
    classic = _measure(capsys, "--sinkhorn", "classic")
    math_attention = _measure(capsys, "--sdpa_backend", "math")
    bf16 = _measure(capsys, "--precision", "bf16")
    assert classic["sinkhorn"] == "classic"
    # Same seed, weights and clips: the first step's loss depends only on the arithmetic.
    assert classic["loss"] == pytest.approx(scaling["loss"], rel=1e-5)
    assert math_attention["loss"] == pytest.approx(scaling["loss"], rel=1e-4)
    assert bf16["loss"] == pytest.approx(scaling["loss"], rel=2e-2)
    assert math_attention["raw"]["flops_per_step"] == pytest.approx(scaling["raw"]["flops_per_step"], rel=2e-2)
    assert scaling["fused_adamw"] is True  # torch's fused AdamW runs on the CPU too


@pytest.mark.slow
def test_step_bench_dino_teacher_is_timed_and_counted(capsys):
    mlp = _measure(capsys, "--breakdown")
    dino = _measure(capsys, "--target_type", "dino_v1", "--distillation_teacher", "dino_s", "--breakdown")
    assert dino["teacher"] == "dino_s" and dino["loss_func"] == "SWAV"
    assert dino["breakdown"]["teacher"] > 0
    # The teacher's forward (a ViT-S over 2 frames per clip) adds FLOPs the MLP projection does not have.
    assert dino["raw"]["flops_per_step"] > mlp["raw"]["flops_per_step"]


def test_step_bench_reports_a_failing_config(capsys):
    rc = step_bench.main(step_bench.get_args([*TINY, "--warmup", "0", "--iters", "1", "--sdpa_backend", "efficient"]))
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert rc == 1 and "error" in record and record["sdpa_backend"] == "efficient"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_cuda_correctness_fails_without_a_gpu(capsys):
    import cuda_correctness
    assert cuda_correctness.main() == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"check": "cuda_available", "ok": False}


def test_bench_transforms_times_both_randaugment_orders(capsys):
    import bench_transforms

    bench_transforms.main(["--shape", "2", "3", "40", "48", "--size", "32", "--clips", "1", "--warmup", "0"])
    chains = [json.loads(line)["chain"] for line in capsys.readouterr().out.splitlines()]
    assert chains == ["official", "crop_first", "multi_scale_crop"]


def test_loss_trace_repeats_to_the_bit_and_sees_another_seed(tmp_path):
    import loss_trace

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script: one order of every reduction
    try:
        first = loss_trace.trace("mlp", "SWAV", steps=2, seed=0, folder=str(tmp_path))
        again = loss_trace.trace("mlp", "SWAV", steps=2, seed=0, folder=str(tmp_path))
        other = loss_trace.trace("mlp", "SWAV", steps=2, seed=1, folder=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert first == again
    assert len(first["losses"]) == 2 and all(float(x) > 0 for x in first["losses"])
    assert other["losses"] != first["losses"] and other["weights_sha256"] != first["weights_sha256"]
