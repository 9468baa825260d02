"""CUDA correctness of a SIGMA training step, for bench/gpu_check.sh.

ViT-S SIGMA-MLP at 16x224x224, batch 2, 3000 prototypes, the same weights and inputs on both
devices. Prints one JSON line per check ({"check", "ok", ...}) and exits 1 if any failed:

    cpu_vs_cuda_fp32     CUDA fp32 loss against the CPU fp32 loss (TF32 off)
    bf16_vs_fp32         bf16 autocast loss against fp32 on CUDA; gradients all present and finite,
                         their direction close to fp32's
    sinkhorn_cpu_cuda    Sinkhorn codes of the model's scores on CUDA against CPU, and against
                         the classic matrix-rewriting iteration; the same at the real size
                         (16 clips x 1411 masked tubes, 3000 prototypes)
    fused_adamw          one fused AdamW step against the default (foreach) implementation
    sdpa_backends        decoder output under each SDPA kernel against the math kernel (bf16)

    python bench/cuda_correctness.py
"""
import copy
import json
import os
import sys
from typing import Dict, List

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sinkhorn import TUBES_PER_CLIP, classic_sinkhorn, cosine_scores  # noqa: E402
from engine_for_pretraining import Objective, compute_loss, pixel_targets  # noqa: E402
from masking_generator import tube_mask  # noqa: E402
from modeling_finetune import patchify  # noqa: E402
from modeling_pretrain import pretrain_videomae_small_patch16_224  # noqa: E402
from optim_factory import create_optimizer, param_groups  # noqa: E402
from sinkhorn import sinkhorn_knopp  # noqa: E402

RESULTS: List[Dict[str, object]] = []


def report(check: str, ok: bool, **values) -> None:
    record = {"check": check, "ok": bool(ok), **values}
    RESULTS.append(record)
    print(json.dumps(record), flush=True)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def loss_and_grads(model, videos, mask, dtype=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast(videos.device.type, dtype=dtype, enabled=dtype is not None):
        loss, _ = compute_loss(model, Objective.of(model), videos, mask)
    loss.backward()
    grads = {n: p.grad.detach().float().clone() if p.grad is not None else None for n, p in model.named_parameters()}
    return float(loss.detach()), grads


def sinkhorn_checks(model, videos, mask, cuda) -> None:
    """Codes of the model's own target scores, then of real-size clustered scores."""
    objective = Objective.of(model)
    with torch.no_grad():
        targets = pixel_targets(patchify(videos, objective.tubelet_size, objective.patch_size), mask)
        logits = model(videos, mask, targets).logits_target.float()  # [B*N_mask, K], cosines / T
    eps = objective.sinkhorn_eps / objective.temperature
    cases = {"model_scores": (logits, eps),
             "real_size": (cosine_scores(16 * TUBES_PER_CLIP, 3000, 256, cuda), objective.sinkhorn_eps)}
    for name, (scores, eps) in cases.items():
        q_cuda = sinkhorn_knopp(scores, eps, 10, log_domain=False)
        q_cpu = sinkhorn_knopp(scores.cpu(), eps, 10, log_domain=False)
        q_classic = classic_sinkhorn(scores, eps, 10)
        diff_cpu = float((q_cuda.cpu() - q_cpu).abs().max())
        diff_classic = float((q_cuda - q_classic).abs().max())
        agree = float((q_cuda.argmax(1).cpu() == q_cpu.argmax(1)).float().mean())
        # fp32 sums over up to 22k tokens in different orders: about 4e-5 apart on the CPU at the real size.
        report("sinkhorn_cpu_cuda", diff_cpu < 2e-4 and diff_classic < 2e-4 and agree >= 0.999, case=name,
               shape=list(scores.shape), max_abs_diff_cpu=diff_cpu, max_abs_diff_classic=diff_classic,
               argmax_agreement_cpu=agree)


def fused_adamw_check(model) -> None:
    """One AdamW step from the same weights and gradients, fused kernel against foreach."""
    models = [copy.deepcopy(model) for _ in range(2)]
    for fused, m in zip((True, False), models):
        g = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g).to(p.device)
        create_optimizer(param_groups(m, weight_decay=0.05), lr=1e-3, fused=fused).step()
    diff = max(float((a - b).abs().max()) for a, b in zip(models[0].parameters(), models[1].parameters()))
    report("fused_adamw", diff < 1e-5, max_abs_param_diff=diff)


def sdpa_check(model, videos, mask) -> None:
    """Decoder output of each fused SDPA kernel against the math kernel, bf16 autocast."""
    outputs = {}
    for name, backend in (("math", SDPBackend.MATH), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with torch.no_grad(), sdpa_kernel(backend), torch.autocast("cuda", dtype=torch.bfloat16):
                outputs[name] = model.decode(videos, mask).float()
        except RuntimeError as e:
            report("sdpa_backends", True, backend=name, skipped=str(e)[:120])
    ref = outputs.pop("math")
    scale = float(ref.abs().max())
    for name, out in outputs.items():
        diff = float((out - ref).abs().max()) / scale
        report("sdpa_backends", diff < 5e-2, backend=name, max_rel_diff=diff)


def main() -> int:
    if not torch.cuda.is_available():
        report("cuda_available", False)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    cpu_model = pretrain_videomae_small_patch16_224(decoder_depth=4, target_type="mlp",
                                                    loss_func="SWAV", num_prototypes=3000).train()
    model = copy.deepcopy(cpu_model).to(cuda)
    videos = torch.randn(2, 3, 16, 224, 224)
    mask = tube_mask(2, cpu_model.encoder.grid_size, 0.9)

    loss_cpu, _ = loss_and_grads(cpu_model, videos, mask)
    videos, mask = videos.to(cuda), mask.to(cuda)
    loss_fp32, grads_fp32 = loss_and_grads(model, videos, mask)
    report("cpu_vs_cuda_fp32", rel(loss_fp32, loss_cpu) < 1e-3, loss_cpu=loss_cpu, loss_cuda=loss_fp32,
           rel_diff=rel(loss_fp32, loss_cpu))

    loss_bf16, grads_bf16 = loss_and_grads(model, videos, mask, torch.bfloat16)
    missing = [n for n, g in grads_bf16.items() if g is None]
    nonfinite = [n for n, g in grads_bf16.items() if g is not None and not torch.isfinite(g).all()]
    flat32 = torch.cat([g.flatten() for g in grads_fp32.values() if g is not None])
    flat16 = torch.cat([g.flatten() for g in grads_bf16.values() if g is not None])
    cos = float(torch.nn.functional.cosine_similarity(flat32, flat16, dim=0))
    report("bf16_vs_fp32", rel(loss_bf16, loss_fp32) < 1e-2 and not missing and not nonfinite and cos > 0.5,
           loss_fp32=loss_fp32, loss_bf16=loss_bf16, rel_diff=rel(loss_bf16, loss_fp32),
           grad_cosine=cos, params_without_grad=missing[:5], nonfinite_grads=nonfinite[:5])

    sinkhorn_checks(model, videos, mask, cuda)
    fused_adamw_check(model)
    sdpa_check(model, videos, mask)
    failed = [r for r in RESULTS if not r["ok"]]
    print(json.dumps({"check": "summary", "ok": not failed, "failed": [r["check"] for r in failed]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
