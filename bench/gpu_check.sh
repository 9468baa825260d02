#!/usr/bin/env bash
# Device check for a GPU machine, in under 8 minutes (every stage has a time limit, and stages that
# would overrun the total are skipped):
#   1. environment: nvidia-smi, torch / CUDA / cuDNN versions
#   2. CUDA correctness of a training step (bench/cuda_correctness.py)
#   3. step benchmark in bf16 at the official per-GPU batch sizes (ViT-S 16, ViT-B 32) for
#      SIGMA-MLP and SIGMA-DINO (randomly initialised DINO ViT-B teacher, as the official scripts),
#      with MFU against the device's dense bf16 peak
#   4. one stage breakdown (ViT-S SIGMA-MLP)
#   5. Sinkhorn at the real size: N = batch x 1411 masked tubes, K = 3000
#   6. fast paths off, one at a time (ViT-B SIGMA-MLP, batch 32): fp32, SDPA math kernel, AdamW
#      without the fused kernel, the classic Sinkhorn; then torch.compile on
# Every JSON line goes to stdout and, when $OUT is set, to $OUT/gpu_check.jsonl; a table of the
# step benchmarks closes the run. From the repository root, with the system python:
#     bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_SECONDS:-460}  # whole run in seconds, with margin for the 5 s kill grace and the table
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    JSONL=$OUT/gpu_check.jsonl
else
    JSONL=$(mktemp)
fi
: > "$JSONL"
# Official SIGMA per-GPU batch sizes (QUVA-Lab/SIGMA): ViT-S 16 (scripts_pretrain/pretrain_ssv2_vit_s.sh,
# 8 GPUs), ViT-B 32 (PRETRAIN.md and scripts_pretrain/pretrain_ssv2_vit_b_multi_node.sh; the Kinetics
# multi-node script uses 40, the single-node ones 16 and 2). Both use a DINO ViT-B teacher (dino_b).
STEP="bench/bench_pretrain_step.py --device cuda --warmup 3 --iters 10"
S=pretrain_videomae_small_patch16_224
B=pretrain_videomae_base_patch16_224

# stage NAME SECONDS CMD...: run CMD with a time limit (cut to what is left of BUDGET), its JSON
# lines to stdout and $JSONL, then one line with the stage's exit status and duration.
stage() {
    local name=$1 limit=$2 left=$((BUDGET - SECONDS)) start=$SECONDS rc
    shift 2
    if [ "$left" -lt 15 ]; then
        echo "{\"stage\": \"$name\", \"skipped\": \"time budget spent\"}" | tee -a "$JSONL"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s)" >&2
    timeout --kill-after=5 "$limit" "$@" | grep --line-buffered '^{' | tee -a "$JSONL"
    rc=${PIPESTATUS[0]}
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"timed_out\": $([ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo true || echo false), \"seconds\": $((SECONDS - start))}" | tee -a "$JSONL"
}

echo "=== environment" >&2
timeout 20 nvidia-smi >&2
stage environment 60 "$PY" -c '
import json, platform, torch, timm
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "capability": torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None}))'

stage cuda_correctness 120 "$PY" bench/cuda_correctness.py

stage vit_s_mlp_bf16 60 "$PY" $STEP --model $S --target_type mlp --precision bf16 --batch_size 16
stage vit_b_mlp_bf16 60 "$PY" $STEP --model $B --target_type mlp --precision bf16 --batch_size 32
stage vit_s_dino_bf16 60 "$PY" $STEP --model $S --target_type dino_v1 --distillation_teacher dino_b \
    --precision bf16 --batch_size 16
stage vit_b_dino_bf16 60 "$PY" $STEP --model $B --target_type dino_v1 --distillation_teacher dino_b \
    --precision bf16 --batch_size 32
stage vit_s_mlp_breakdown 60 "$PY" $STEP --model $S --target_type mlp --precision bf16 --batch_size 16 --breakdown

stage sinkhorn_real_size 40 "$PY" bench/bench_sinkhorn.py --device cuda --n 22576 45152 --k 3000 --iters 10

stage vit_b_mlp_fp32 40 "$PY" $STEP --model $B --target_type mlp --precision fp32 --batch_size 32 --iters 5
stage vit_b_mlp_sdpa_math 40 "$PY" $STEP --model $B --target_type mlp --precision bf16 --batch_size 32 --sdpa_backend math
stage vit_b_mlp_adamw_foreach 40 "$PY" $STEP --model $B --target_type mlp --precision bf16 --batch_size 32 --fused_adamw off
stage vit_b_mlp_sinkhorn_classic 40 "$PY" $STEP --model $B --target_type mlp --precision bf16 --batch_size 32 --sinkhorn classic
stage vit_b_mlp_compile 150 "$PY" $STEP --model $B --target_type mlp --precision bf16 --batch_size 32 --compile

"$PY" - "$JSONL" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print("\n| model | target | batch | precision | fast-path change | s/step | clips/s | GFLOP/clip | TFLOPS | MFU | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "median_step_s" not in r or r.get("variant") != "ours":
        continue
    change = ", ".join(k for k, on in (("sdpa " + r["sdpa_backend"], r["sdpa_backend"] != "auto"),
                                       ("AdamW foreach", not r["fused_adamw"]), ("compile", r["compile"]),
                                       ("classic Sinkhorn", r["sinkhorn"] == "classic"),
                                       ("breakdown", "breakdown" in r)) if on) or "-"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
    print(f"| {r['model'].split('_')[2]} | {r['target_type']} | {r['batch_size']} | {r['precision']} | {change} "
          f"| {r['median_step_s']:.4f} | {r['clips_per_s']:.1f} | {r['gflops_per_clip']:.1f} | {r['tflops']:.3g} "
          f"| {mfu} | {r['peak_mem_mb'] / 1024:.1f} |")
for r in rows:
    if "breakdown" in r:
        stages = ", ".join(f"{k} {1000 * v:.1f}" for k, v in r["breakdown"].items())
        print(f"\nbreakdown (ms) of {r['model']} {r['target_type']} batch {r['batch_size']} {r['precision']}: {stages}; "
              f"sum {1000 * r['breakdown_total_s']:.1f}, step {1000 * r['median_step_s']:.1f}")
failed = [r for r in rows if r.get("ok") is False or "error" in r or r.get("rc", 0) != 0]
print(f"\n{len(failed)} failed check(s) or stage(s)" + "".join(f"\n  {json.dumps(r)}" for r in failed))
EOF
echo "total ${SECONDS}s; JSON lines in $JSONL" >&2
