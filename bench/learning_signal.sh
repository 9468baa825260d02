#!/usr/bin/env bash
# Does pretraining teach the encoder anything? A CPU-sized answer on moving handwritten digits
# (datasets/digits.py: scikit-learn's UCI scans moving across 48x48 frames). For every seed,
# pretrain a ViT-Ti SIGMA-MLP and a ViT-Ti VideoMAE (pixel) for the same number of steps, then
# evaluate their frozen encoders and a randomly initialised one with python -m evals.probe
# (standardised L-BFGS logistic regression, C by 4-fold CV on the train videos, and kNN-20) on two labellings of
# the same videos: the digit (10 classes, appearance) and the motion direction (4 classes). Prints
# the per-run JSON lines and a markdown table of mean, sd and the single runs (also written to
# $OUT/learning_signal.md). About 18 minutes on 2 cores with the defaults (BENCHMARKS.md).
#
#   bash bench/learning_signal.sh [OUT]        (default OUT=output/learning_signal)
#
# Environment: SEEDS (pretraining / random-init seeds, default "0 1"), EPOCHS (8 = 496 steps),
# JOBS (processes at once, default 2; each runs with OMP_NUM_THREADS=1, which is 4-7x faster
# than two threads each on a shared 2-core machine), DATA_SEED, SPLIT_SEED (which videos and
# which scans per split), TRAIN, VAL, PROTOS, DEVICE (cpu or cuda), PYTHON. Needs scikit-learn.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-output/learning_signal}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-0 1}
EPOCHS=${EPOCHS:-8}
JOBS=${JOBS:-2}
DATA_SEED=${DATA_SEED:-0}
SPLIT_SEED=${SPLIT_SEED:-$DATA_SEED}
TRAIN=${TRAIN:-1000}
VAL=${VAL:-400}
PROTOS=${PROTOS:-16}
DEVICE=${DEVICE:-cpu}
DATA=$OUT/data
export OMP_NUM_THREADS=1
mkdir -p "$OUT"

[ -f "$DATA/digit/val.csv" ] || $PYTHON -m datasets.digits --out "$DATA" --num_train "$TRAIN" --num_val "$VAL" \
    --num_test 0 --seed "$DATA_SEED" --split_seed "$SPLIT_SEED"

CLIP=(--input_size 48 --num_frames 8 --sampling_rate 4)
pretrain() {  # name, seed, objective flags...
    local name=$1 seed=$2; shift 2
    [ -f "$OUT/$name/checkpoint-latest.pth" ] && [ -f "$OUT/$name/log.txt" ] && \
        [ "$(wc -l < "$OUT/$name/log.txt")" -ge "$EPOCHS" ] && return
    $PYTHON run_sigma_pretraining.py --data_path "$DATA" --data_path_csv "$DATA/pretrain.csv" "${CLIP[@]}" \
        --model pretrain_videomae_tiny_patch16_224 --decoder_depth 2 --mask_ratio 0.75 --batch_size 16 \
        --epochs "$EPOCHS" --warmup_epochs 1 --lr 8e-3 --num_workers 1 --log_every 100 \
        --save_ckpt_freq "$EPOCHS" --save_ckpt_steps 0 --keep_last_ckpts 1 --device "$DEVICE" --seed "$seed" \
        --output_dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
probe() {  # name, seed, weight flags...
    local name=$1 seed=$2; shift 2
    $PYTHON -m evals.probe --model vit_tiny_patch16_224 "$@" --data_set custom \
        --data_path "$DATA/digit" "$DATA/direction" --data_root "$DATA" "${CLIP[@]}" --short_side_size 48 \
        --batch_size 64 --num_workers 1 --k 20 --device "$DEVICE" --seed "$seed" \
        --output_dir "$OUT/probe_$name" >> "$OUT/probe_$name.log" 2>&1
}
run() {  # name, seed: one encoder, pretraining (unless random) then its probe
    local name=$1 seed=$2
    case $name in
        sigma_mlp_*) pretrain "$name" "$seed" --target_type mlp --loss_func SWAV --num_prototypes "$PROTOS"
                     probe "$name" "$seed" --finetune "$OUT/$name/checkpoint-latest.pth" ;;
        videomae_*) pretrain "$name" "$seed" --target_type pixel --loss_func L2
                    probe "$name" "$seed" --finetune "$OUT/$name/checkpoint-latest.pth" ;;
        random_*) probe "$name" "$seed" --random_init ;;
    esac
    echo "done $name"
}

start=$(date +%s)
for seed in $SEEDS; do
    for name in sigma_mlp videomae random; do
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
        run "${name}_s$seed" "$seed" &
    done
done
wait
elapsed=$(( $(date +%s) - start ))

$PYTHON - "$OUT" "$elapsed" "$SEEDS" <<'PY'
import json, os, statistics, sys
out, elapsed, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
rows = []
for name, label in (("videomae", "VideoMAE (pixel)"), ("sigma_mlp", "SIGMA-MLP"), ("random", "random init")):
    runs = {}
    for seed in seeds:
        res = json.load(open(os.path.join(out, f"probe_{name}_s{seed}", "probe_results.json")))["labellings"]
        runs[seed] = {f"{task}_{kind}": (res[task]["probe"]["top1"] if kind == "probe" else res[task]["knn"]["20"])
                      for task in ("digit", "direction") for kind in ("probe", "knn20")}
        log = os.path.join(out, f"{name}_s{seed}", "log.txt")
        if os.path.exists(log):
            epochs = [json.loads(line) for line in open(log)]
            runs[seed]["pretrain_loss"] = [round(epochs[0]["train_loss"], 3), round(epochs[-1]["train_loss"], 3)]
        print(json.dumps({"encoder": label, "seed": int(seed), **runs[seed]}))
    rows.append((label, runs))

def cell(runs, key):
    values = [r[key] for r in runs.values()]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} ({' / '.join(f'{v:.1f}' for v in values)})"

lines = [f"| encoder ({len(seeds)} seeds: mean ± sd (runs)) | digit probe (chance 10) | digit kNN-20 | "
         "direction probe (chance 25) | direction kNN-20 |", "|---|---|---|---|---|"]
for label, runs in rows:
    lines.append(f"| {label} | " + " | ".join(cell(runs, k) for k in
                 ("digit_probe", "digit_knn20", "direction_probe", "direction_knn20")) + " |")
lines.append(f"\nWall time {elapsed // 60} min {elapsed % 60} s.")
open(os.path.join(out, "learning_signal.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
