#!/usr/bin/env bash
# Device check for a GPU machine: one script, about 6 minutes (its stage limits add up to its budget).
#   preflight          nvidia-smi; every import the code needs, the missing ones named (stops here)
#   cuda_correctness   bench/cuda_correctness.py (CPU vs CUDA loss, bf16 vs fp32, Sinkhorn, AdamW, SDPA)
#   vit_b_mlp_bf16     step benchmark, SIGMA-MLP ViT-B batch 32 bf16: s/step, peak memory, MFU
#   vit_b_dino_bf16    the same for SIGMA-DINO (random DINO ViT-B teacher, as the official scripts)
#   sinkhorn           Sinkhorn at the real size: 32 clips x 1411 masked tubes, K = 3000
#   sync_count         host syncs in a pretraining step (torch.cuda.set_sync_debug_mode): must be 0
#   ddp_kill_resume    the real pretraining driver under torchrun (2 processes when 2 GPUs are
#                      visible) on generated 224 px videos: a reference run, a run killed by SIGTERM
#                      (exit 75, checkpoint) and resumed; the per-step losses must match the reference
#   finetune_eval_knn  1-epoch fine-tune from that checkpoint, multi-view test, kNN eval
#   deepspeed_srun     DeepSpeed bf16 ZeRO 0 fine-tune started as srun would (SLURM_* variables, one
#                      GPU per task: 2 tasks when 2 GPUs, else 1), plain weights must be fp32 masters
#   gpu_augment        --gpu_augment on the device against the worker path on the same items (within one
#                      uint8 level), then bench/bench_loader.py: the real DataLoader with 4 and 14 workers,
#                      ours, ours with --gpu_augment and the official path on generated 320x240 videos:
#                      clips/s per core and the fraction of a GPU a 16-core-per-GPU node keeps fed
#   fed_step           the real pretraining driver, ViT-B SIGMA-MLP bf16 batch 32, fed by 14 workers from
#                      those videos, with and without --gpu_augment: clips/s, data wait per step, MFU
#   extract_features   bench/bench_extract.py, ViT-B 16x224 on generated 40 s 320x240 videos: ours (one
#                      decode, batches of 32 windows) against VideoMAEv2's per-window get_batch + batch-1
#                      loop; fp32 features within 1e-4 of that loop's, then windows/s and videos/s in bf16
# Every stage's stdout and stderr go to $OUT/logs/<stage>.log, its JSON lines to $OUT/gpu_check.jsonl;
# a table for BENCHMARKS.md closes the run ($OUT/table.md). From the repository root:
#     OUT=/tmp/gpu_check bash bench/gpu_check.sh
# GPU_CHECK_DRY=1 runs the same stages on the CPU at toy sizes (minutes, for tests);
# GPU_CHECK_ONLY="preflight sync_count" runs only the named stages.
set -u
if [[ "${1:-}" == __* ]]; then MODE=$1; shift; else MODE=main; fi
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
OUT=${OUT:-$(mktemp -d)}
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_SECONDS:-620}  # the stage limits below add up to 615 s
SCALE=1  # stage limits x SCALE: the CPU dry run is slower than the GPU
WORK=$OUT/work  # generated videos and run folders (a fresh one per check: no resume from an old run)
if [[ "$MODE" == main ]]; then rm -rf "$WORK"; fi
mkdir -p "$OUT/logs" "$WORK"
JSONL=$OUT/gpu_check.jsonl

if [[ "$DRY" == 1 ]]; then
    SCALE=${GPU_CHECK_DRY_SCALE:-6} BUDGET=$((BUDGET * ${GPU_CHECK_DRY_SCALE:-6}))
    DEVICE=cpu SIZE=32 FRAMES=4 BATCH=2 PROTOS=16 VIDEO=(--frames 16 --height 48 --width 64)
    STEP=(bench/bench_pretrain_step.py --device cpu --input_size 32 --num_frames 4 --num_prototypes 16
          --mask_ratio 0.5 --warmup 0 --iters 1)
    SINKHORN_N=(--n 64 --k 16)
    FED=(--num_train 8 --frames 24 --height 48 --width 64) FED_MODEL=pretrain_videomae_small_patch16_224
    FED_BATCH=2 FED_WORKERS=(1 2) FED_RATE=2
    EXTRACT=(--device cpu --model vit_tiny_patch16_224 --input_size 32 --num_videos 1 --seconds 2 --height 48
             --width 64 --batch_size 4) EXTRACT_PRECISION=fp32
else
    DEVICE=cuda SIZE=224 FRAMES=16 BATCH=4 PROTOS=3000 VIDEO=(--frames 40 --height 240 --width 320)
    STEP=(bench/bench_pretrain_step.py --device cuda --warmup 2 --iters 6)
    SINKHORN_N=(--n 45152 --k 3000)  # 32 clips x 1411 masked tubes (16x224x224, 90% of 1568)
    # 64 videos of 96 frames at 320x240, x264's default GOP (one keyframe each, as original files)
    FED=(--num_train 64 --frames 96 --height 240 --width 320) FED_MODEL=pretrain_videomae_base_patch16_224
    FED_BATCH=32 FED_WORKERS=(4 14) FED_RATE=4
    EXTRACT=(--device cuda --model vit_base_patch16_224 --input_size 224 --num_videos 2 --seconds 40
             --batch_size 32) EXTRACT_PRECISION=bf16
fi
NGPU=0
if [[ "$DEVICE" == cuda ]]; then NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); fi
NPROC=2
if [[ "$DEVICE" == cuda && "$NGPU" -lt 2 ]]; then NPROC=1; fi  # NCCL refuses two ranks on one GPU

jline() { echo "$1" | tee -a "$JSONL"; }

# ---------------------------------------------------------------- stages run in a child (bash $0 __name)

pretrain_args() {  # the pretraining recipe of the DDP stage, output in $1
    echo --model pretrain_videomae_small_patch16_224 --data_path "$WORK/videos" \
        --data_path_csv "$WORK/videos/pretrain.csv" --input_size "$SIZE" --num_frames "$FRAMES" \
        --sampling_rate 2 --batch_size "$BATCH" --epochs 2 --warmup_epochs 1 --num_prototypes "$PROTOS" \
        --num_workers 2 --log_every 1 --save_ckpt_steps 0 --save_ckpt_freq 1 --device "$DEVICE" --output_dir "$1"
}

torchrun_pretrain() {  # torchrun_pretrain OUTPUT_DIR: start the driver in the background, pid in TR_PID
    # shellcheck disable=SC2046  # pretrain_args prints words without spaces
    "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$NPROC" run_sigma_pretraining.py \
        $(pretrain_args "$1") &
    TR_PID=$!
}

if [[ "$MODE" == __ddp ]]; then
    "$PY" -m datasets.synthetic --out "$WORK/videos" --num_train 16 --num_val 8 --num_test 8 "${VIDEO[@]}" || exit 1
    torchrun_pretrain "$WORK/ref"
    wait "$TR_PID" || { echo "reference run failed" >&2; exit 1; }
    torchrun_pretrain "$WORK/killed"
    for _ in $(seq 600); do  # until step 2 is logged, then SIGTERM to the workers as a preemption would
        [[ -f "$WORK/killed/metrics.jsonl" ]] && (( $(wc -l < "$WORK/killed/metrics.jsonl") >= 2 )) && break
        sleep 0.2
    done
    pkill -TERM -P "$TR_PID"
    wait "$TR_PID"
    echo "killed run: torchrun exit $? (workers exit 75 on a saved checkpoint)" >&2
    torchrun_pretrain "$WORK/killed"
    wait "$TR_PID" || { echo "resumed run failed" >&2; exit 1; }
    exec "$PY" - "$WORK/ref" "$WORK/killed" "$NPROC" <<'EOF'
import json, sys
def losses(out):
    steps = {}
    for line in open(f"{out}/metrics.jsonl"):
        r = json.loads(line)
        steps[r["step"]] = r["loss"]
    return steps
ref, resumed = losses(sys.argv[1]), losses(sys.argv[2])
diff = max(abs(ref[s] - resumed.get(s, float("inf"))) for s in ref)
resumed_from = [l for l in open(f"{sys.argv[2]}/train.log") if "resumed from" in l]
ok = sorted(ref) == sorted(resumed) and diff <= 1e-3 and bool(resumed_from)  # CUDA kernels are not all deterministic
print(json.dumps({"check": "ddp_kill_resume", "ok": ok, "processes": int(sys.argv[3]), "steps": len(ref),
                  "max_abs_loss_diff": diff, "resumed": bool(resumed_from)}))
sys.exit(0 if ok else 1)
EOF
fi

finetune_args() {  # finetune_args OUTPUT_DIR [extra...]
    local out=$1
    shift
    echo --model vit_small_patch16_224 --data_set custom --nb_classes 4 --data_path "$WORK/videos" \
        --finetune "$WORK/ref/checkpoint-1.pth" --input_size "$SIZE" --short_side_size "$SIZE" \
        --num_frames "$FRAMES" --sampling_rate 2 --batch_size "$BATCH" --num_sample 1 --epochs 1 --warmup_epochs 0 \
        --num_workers 2 --log_every 1 --test_num_segment 2 --test_num_crop 3 --device "$DEVICE" --output_dir "$out" "$@"
}

if [[ "$MODE" == __finetune ]]; then
    [[ -f "$WORK/ref/checkpoint-1.pth" ]] || { echo "needs the ddp_kill_resume stage's checkpoint" >&2; exit 1; }
    # shellcheck disable=SC2046
    "$PY" run_class_finetuning.py $(finetune_args "$WORK/finetune") || exit 1
    "$PY" -m evals.knn --model vit_small_patch16_224 --data_set custom --nb_classes 4 --data_path "$WORK/videos" \
        --finetune "$WORK/ref/checkpoint-1.pth" --input_size "$SIZE" --short_side_size "$SIZE" \
        --num_frames "$FRAMES" --sampling_rate 2 --batch_size "$BATCH" --k 1 5 --device "$DEVICE" \
        --output_dir "$WORK/knn" || exit 1
    exec "$PY" -c '
import json, sys
test, knn = (json.load(open(p)) for p in sys.argv[1:])
ok = test["num_videos"] == 8 and knn["num_val"] == 8
print(json.dumps({"check": "finetune_eval_knn", "ok": ok, "test_top1": test["top1"], "views": test["views"],
                  "knn_top1_k1": knn["per_k"]["1"]["top1"], "knn_top1_k5": knn["per_k"]["5"]["top1"]}))
sys.exit(0 if ok else 1)' "$WORK/finetune/test_results.json" "$WORK/knn/knn_results.json"
fi

if [[ "$MODE" == __deepspeed ]]; then
    [[ -f "$WORK/ref/checkpoint-1.pth" ]] || { echo "needs the ddp_kill_resume stage's checkpoint" >&2; exit 1; }
    precision=bf16
    tasks=$NPROC
    pids=()
    port=$((29000 + RANDOM % 500))
    for task in $(seq 0 $((tasks - 1))); do
        # As `srun --ntasks=$tasks --gpus-per-task=1`: no torchrun variables, each task sees one GPU.
        # shellcheck disable=SC2046  # finetune_args prints words without spaces
        env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u MASTER_ADDR SLURM_PROCID="$task" SLURM_LOCALID="$task" \
            SLURM_NTASKS="$tasks" SLURM_JOB_NODELIST=localhost SLURM_JOB_ID="$port" \
            MASTER_PORT=$port ${DEVICE_VISIBLE:+CUDA_VISIBLE_DEVICES=$task} \
            "$PY" run_class_finetuning.py $(finetune_args "$WORK/deepspeed" --enable_deepspeed --zero_stage 0 \
                --precision "$precision" --test_num_segment 1 --test_num_crop 1) &
        pids+=($!)
    done
    rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    (( rc == 0 )) || exit 1
    exec "$PY" -c '
import json, sys, torch
weights = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["model"]
dtypes = sorted({str(v.dtype) for v in weights.values() if v.is_floating_point()})
ok = dtypes == ["torch.float32"]
print(json.dumps({"check": "deepspeed_srun", "ok": ok, "tasks": int(sys.argv[2]), "weight_dtypes": dtypes}))
sys.exit(0 if ok else 1)' "$WORK/deepspeed/checkpoint-0.pth" "$tasks"
fi

read -r -d '' GPU_AUGMENT_EQUAL <<'EOF'
import json, sys
import torch
sys.path.insert(0, ".")
from datasets.annotations import read_annotations
from datasets.gpu_augment import augment_batch
from datasets.video_dataset import AugmentConfig, ClipConfig, MaskConfig, VideoClipDataset, collate_clips
root, device, size, frames = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
samples = read_annotations(f"{root}/pretrain.csv", root, with_labels=False)[:8]
clip = ClipConfig(num_frames=frames, sampling_rate=2, input_size=size)
mask = MaskConfig(grid=(frames // 2, size // 16, size // 16))
worst = 0.0
for augmentation in ("multi_scale_crop", "resize"):
    kwargs = dict(clip=clip, augment=AugmentConfig(pretrain_augmentation=augmentation), mask=mask, num_sample=2)
    cpu = collate_clips([VideoClipDataset(samples, "pretrain", **kwargs)[i] for i in range(len(samples))])
    gpu_set = VideoClipDataset(samples, "pretrain", gpu_augment=True, **kwargs)
    out = augment_batch(collate_clips([gpu_set[i] for i in range(len(samples))]), device, size)
    assert torch.equal(out["mask"].cpu(), cpu["mask"]), "masks differ"
    # One uint8 level in ImageNet-normalised units is 1 / (255 std) <= 0.0175.
    worst = max(worst, (out["video"].float().cpu() - cpu["video"]).abs().max().item())
ok = worst <= 1 / (255 * 0.224) + 1e-4
print(json.dumps({"check": "gpu_augment_equal", "ok": ok, "device": device.type, "max_abs_diff": worst}))
sys.exit(0 if ok else 1)
EOF

if [[ "$MODE" == __gpu_augment ]]; then
    "$PY" -m datasets.synthetic --out "$WORK/fed_videos" --num_val 2 --num_test 2 "${FED[@]}" || exit 1
    "$PY" -c "$GPU_AUGMENT_EQUAL" "$WORK/fed_videos" "$DEVICE" "$SIZE" "$FRAMES" || exit 1
    exec "$PY" bench/bench_loader.py --csv "$WORK/fed_videos/pretrain.csv" --data_path "$WORK/fed_videos" \
        --num_workers "${FED_WORKERS[@]}" --batch_size "$FED_BATCH" --num_frames "$FRAMES" --input_size "$SIZE" \
        --sampling_rate "$FED_RATE" --warmup 1 --batches 4 --rounds 1 --device "$DEVICE"
fi

if [[ "$MODE" == __fed ]]; then
    [[ -f "$WORK/fed_videos/pretrain.csv" ]] || { echo "needs the gpu_augment stage's videos" >&2; exit 1; }
    for augment in cpu gpu; do
        extra=()
        if [[ $augment == gpu ]]; then extra=(--gpu_augment); fi
        "$PY" run_sigma_pretraining.py --model "$FED_MODEL" --data_path "$WORK/fed_videos" \
            --data_path_csv "$WORK/fed_videos/pretrain.csv" --input_size "$SIZE" --num_frames "$FRAMES" \
            --sampling_rate "$FED_RATE" --batch_size "$FED_BATCH" --epochs 1 --warmup_epochs 0 \
            --num_prototypes "$PROTOS" --num_workers "${FED_WORKERS[-1]}" --log_every 1 --save_ckpt_steps 0 \
            --device "$DEVICE" --output_dir "$WORK/fed_$augment" "${extra[@]}" || exit 1
    done
    exec "$PY" - "$WORK" "$JSONL" <<'EOF'
import json, statistics, sys
work, jsonl = sys.argv[1:]
bench = [json.loads(l) for l in open(jsonl) if l.startswith("{")]
step = next((r for r in bench if r.get("target_type") == "mlp" and r.get("mfu") and r.get("variant") == "ours"), None)
ok = True
for augment in ("cpu", "gpu"):
    rows = [json.loads(l) for l in open(f"{work}/fed_{augment}/metrics.jsonl") if '"step_time"' in l][1:]  # first: warm-up
    ok &= bool(rows)
    if not rows:
        continue
    clips = statistics.median(r["clips_per_s"] for r in rows)
    record = {"check": f"fed_step_{augment}_augment", "ok": True, "steps": len(rows), "clips_per_s": clips,
              "step_time_s": statistics.median(r["step_time"] for r in rows),
              "data_wait_s": statistics.median(r["data_time"] for r in rows)}
    if step:  # MFU from the step bench's FLOPs per clip and the device peak it used
        record["mfu"] = clips * step["gflops_per_clip"] * 1e9 / (step["tflops"] / step["mfu"] * 1e12)
        record["step_bench_clips_per_s"] = step["clips_per_s"]
    print(json.dumps(record))
sys.exit(0 if ok else 1)
EOF
fi

if [[ "$MODE" == __extract ]]; then  # fp32 equality on one video, then the timing at EXTRACT_PRECISION
    "$PY" bench/bench_extract.py "${EXTRACT[@]}" --work_dir "$WORK/extract" --precision fp32 --num_videos 1 \
        --check 1e-4 || exit 1
    exec "$PY" bench/bench_extract.py "${EXTRACT[@]}" --work_dir "$WORK/extract" --precision "$EXTRACT_PRECISION"
fi

# ---------------------------------------------------------------- the stage runner

# stage NAME SECONDS CMD...: run CMD with a time limit (cut to what is left of BUDGET); all its
# output to $OUT/logs/NAME.log, its JSON lines also to $JSONL; then a line with status and time.
stage() {
    local name=$1 limit=$(($2 * SCALE)) left=$((BUDGET - SECONDS)) start=$SECONDS rc
    shift 2
    if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY " != *" $name "* ]]; then
        return 0
    fi
    if (( left < 10 )); then
        jline "{\"stage\": \"$name\", \"skipped\": \"time budget spent\"}"
        return 1
    fi
    (( limit > left )) && limit=$left
    echo "=== $name (limit ${limit}s)" >&2
    timeout --kill-after=5 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    grep '^{' "$OUT/logs/$name.log" | tee -a "$JSONL"
    if (( rc != 0 )); then tail -n 15 "$OUT/logs/$name.log" >&2; fi
    local timed_out=false
    if (( rc == 124 || rc == 137 )); then timed_out=true; fi
    jline "{\"stage\": \"$name\", \"rc\": $rc, \"timed_out\": $timed_out, \"seconds\": $((SECONDS - start))}"
    return "$rc"
}

read -r -d '' PREFLIGHT <<'EOF'
import importlib, json, sys
required = ["torch", "torchvision", "timm", "decord", "av", "numpy", "einops", "tensorboard", "imageio_ffmpeg"]
missing = []
for name in required:
    try:
        importlib.import_module(name)
    except Exception as e:  # a broken install counts as missing, with its reason
        missing.append(f"{name} ({type(e).__name__}: {e})")
try:
    import deepspeed  # noqa: F401  (optional: only the deepspeed_srun stage needs it)
    has_deepspeed = True
except Exception:
    has_deepspeed = False
info = {"check": "preflight", "missing": missing, "deepspeed": has_deepspeed}
if not missing:
    import platform, torch, timm
    info.update(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
need_cuda = sys.argv[1] == "cuda"
info["ok"] = not missing and (info.get("cuda_available") or not need_cuda)
print(json.dumps(info))
sys.exit(0 if info["ok"] else 1)
EOF

read -r -d '' SYNC_COUNT <<'EOF'
import json, sys, warnings
import torch
sys.path.insert(0, ".")
from engine_for_pretraining import Objective, compute_loss
from masking_generator import tube_mask
from modeling_finetune import MaskIndex
from modeling_pretrain import pretrain_videomae_small_patch16_224
device = torch.device(sys.argv[1])
if device.type == "cuda":  # ViT-S at the real clip size
    model = pretrain_videomae_small_patch16_224(target_type="mlp", loss_func="SWAV", num_prototypes=3000).to(device)
    videos = torch.randn(4, 3, 16, 224, 224, device=device)
else:
    model = pretrain_videomae_small_patch16_224(target_type="mlp", loss_func="SWAV", num_prototypes=16,
                                                img_size=32, all_frames=4)
    videos = torch.randn(2, 3, 4, 32, 32)
objective = Objective.of(model)
mask = tube_mask(videos.shape[0], model.encoder.grid_size, 0.9)
counts = {}
for name, m in (("mask_index", MaskIndex.of(mask).to(device)), ("boolean_mask", mask.to(device))):
    compute_loss(model, objective, videos, m)[0].backward()  # warm-up: lazy inits may sync once
    if device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = compute_loss(model, objective, videos, m)
            loss.backward()
            torch.cuda.set_sync_debug_mode("default")
        counts[name] = sum("synchroniz" in str(w.message) for w in caught)
    else:
        from torch.utils._python_dispatch import TorchDispatchMode
        aten = torch.ops.aten
        syncing = {aten.nonzero.default, aten._local_scalar_dense.default, aten.bincount.default,
                   aten.masked_select.default, aten.is_nonzero.default}
        class Count(TorchDispatchMode):
            n = 0
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                Count.n += func in syncing or (func is aten.index.Tensor and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None))
                return func(*args, **(kwargs or {}))
        with Count():
            compute_loss(model, objective, videos, m)[0].backward()
        counts[name] = Count.n
ok = counts["mask_index"] == 0
print(json.dumps({"check": "sync_count", "ok": ok, "device": device.type, "syncs_per_step": counts}))
sys.exit(0 if ok else 1)
EOF

: > "$JSONL"
if stage preflight 30 "$PY" -c "$PREFLIGHT" "$DEVICE"; then
    if [[ "$DEVICE" == cuda ]]; then
        timeout 10 nvidia-smi > "$OUT/logs/nvidia-smi.log" 2>&1
        stage cuda_correctness 50 "$PY" bench/cuda_correctness.py
    fi
    stage vit_b_mlp_bf16 30 "$PY" "${STEP[@]}" --model pretrain_videomae_base_patch16_224 --target_type mlp \
        --precision bf16 --batch_size "$( [[ $DRY == 1 ]] && echo 2 || echo 32 )"
    stage vit_b_dino_bf16 35 "$PY" "${STEP[@]}" --model pretrain_videomae_base_patch16_224 --target_type dino_v1 \
        --distillation_teacher dino_b --precision bf16 --batch_size "$( [[ $DRY == 1 ]] && echo 2 || echo 32 )"
    stage sinkhorn 20 "$PY" bench/bench_sinkhorn.py --device "$DEVICE" "${SINKHORN_N[@]}" --iters 5
    stage sync_count 15 "$PY" -c "$SYNC_COUNT" "$DEVICE"
    stage ddp_kill_resume 90 bash "$0" __ddp
    stage finetune_eval_knn 55 bash "$0" __finetune
    if [[ "$DEVICE" == cuda ]]; then export DEVICE_VISIBLE=1; fi
    stage deepspeed_srun 45 bash "$0" __deepspeed
    stage gpu_augment 80 bash "$0" __gpu_augment
    stage fed_step 90 bash "$0" __fed
    stage extract_features 75 bash "$0" __extract
fi

"$PY" - "$JSONL" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print("\n| model | target | batch | precision | s/step | clips/s | GFLOP/clip | TFLOPS | MFU | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "median_step_s" in r and r.get("variant") == "ours":
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        print(f"| {r['model'].split('_')[2]} | {r['target_type']} | {r['batch_size']} | {r['precision']} "
              f"| {r['median_step_s']:.4f} | {r['clips_per_s']:.1f} | {r['gflops_per_clip']:.1f} | {r['tflops']:.3g} "
              f"| {mfu} | {r['peak_mem_mb'] / 1024:.1f} |")
print("\n| stage | status | seconds |\n|---|---|---|")
for r in rows:
    if "stage" in r:
        status = r.get("skipped") or ("timed out" if r["timed_out"] else "ok" if r["rc"] == 0 else f"failed (rc {r['rc']})")
        print(f"| {r['stage']} | {status} | {r.get('seconds', '-')} |")
print()
for r in rows:
    if "check" in r:
        print(f"- {r['check']}: {'ok' if r.get('ok') else 'FAILED'} " +
              json.dumps({k: v for k, v in r.items() if k not in ('check', 'ok')}))
    elif "scaling_median_s" in r:
        print(f"- sinkhorn N={r['n']} K={r['k']}: {1000 * r['scaling_median_s']:.1f} ms (classic "
              f"{1000 * r['classic_median_s']:.1f} ms), extra memory {r['scaling_extra_mem_mb']} MB")
failed = [r for r in rows if r.get("ok") is False or (r.get("rc") or 0) != 0 or "skipped" in r]
print(f"\n{len(failed)} failed check(s) or stage(s)")
EOF
echo "total ${SECONDS}s; logs in $OUT/logs, JSON lines in $JSONL, table in $OUT/table.md" >&2
