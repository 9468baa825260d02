#!/usr/bin/env bash
# Does pretraining teach the encoder anything? On generated videos (one textured object crossing a
# drifting background), pretrain a small SIGMA-MLP and a VideoMAE-pixel model for the same number of
# steps, then evaluate the frozen encoders of both and of a randomly initialised one with a linear
# probe and weighted kNN on two labellings of such videos: the motion (4 directions; appearance
# independent of the label) and the moving object's shape (3 shapes; direction random). Prints JSON
# lines and a markdown table (also written to $OUT/learning_signal.md). CPU, about 20 minutes on 2 cores.
#
#   bash bench/learning_signal.sh [OUT]        (default OUT=output/learning_signal)
#
# Sizes can be changed through the environment: EPOCHS, PT_BATCH, FRAMES, SIZE, TRAIN, VAL, PROTOS,
# PROBE_EPOCHS, DEVICE (cpu or cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-output/learning_signal}
PYTHON=${PYTHON:-python}
EPOCHS=${EPOCHS:-60}
PT_BATCH=${PT_BATCH:-16}
FRAMES=${FRAMES:-8}
SIZE=${SIZE:-64}
TRAIN=${TRAIN:-192}
VAL=${VAL:-96}
PROTOS=${PROTOS:-64}
PROBE_EPOCHS=${PROBE_EPOCHS:-15}
DEVICE=${DEVICE:-cpu}
DATA=$OUT/data
mkdir -p "$OUT"

make_data() {  # folder, labelling flags...
    local dir=$1; shift
    [ -f "$dir/val.csv" ] || $PYTHON -m datasets.synthetic --out "$dir" "$@" --num_train "$TRAIN" --num_val "$VAL" \
        --num_test 8 --frames 32 --height "$SIZE" --width $((SIZE * 5 / 4))
}
make_data "$DATA/motion" --classes 4 --seed 1
make_data "$DATA/shape" --label shape --seed 2

CLIP=(--input_size "$SIZE" --num_frames "$FRAMES" --sampling_rate 2)
pretrain() {  # name, objective flags...
    local name=$1; shift
    $PYTHON run_sigma_pretraining.py --data_path "$DATA/motion" --data_path_csv "$DATA/motion/pretrain.csv" "${CLIP[@]}" \
        --model pretrain_videomae_small_patch16_224 --decoder_depth 2 --batch_size "$PT_BATCH" \
        --epochs "$EPOCHS" --warmup_epochs 5 --lr 1.5e-3 --num_workers 2 --log_every 50 --save_ckpt_freq "$EPOCHS" \
        --device "$DEVICE" --seed 0 --output_dir "$OUT/$name" "$@"
}
pretrain sigma_mlp --target_type mlp --loss_func SWAV --num_prototypes "$PROTOS"
pretrain videomae --target_type pixel --loss_func L2

for task in motion shape; do
    classes=$([ $task = motion ] && echo 4 || echo 3)
    EVAL=(--model vit_small_patch16_224 --data_set custom --nb_classes "$classes" --data_path "$DATA/$task" "${CLIP[@]}"
          --short_side_size "$SIZE" --num_workers 2 --device "$DEVICE" --seed 0)
    for name in sigma_mlp videomae random; do
        if [ "$name" = random ]; then weights=(--random_init); probe_weights=(); else
            weights=(--finetune "$OUT/$name/checkpoint-latest.pth"); probe_weights=("${weights[@]}"); fi
        $PYTHON eval_knn.py "${EVAL[@]}" "${weights[@]}" --k 10 20 --batch_size 32 --output_dir "$OUT/knn_${task}_$name"
        $PYTHON run_class_finetuning.py "${EVAL[@]}" "${probe_weights[@]}" --linear_probing --epochs "$PROBE_EPOCHS" \
            --warmup_epochs 2 --batch_size 32 --num_sample 1 --lr 0.1 --weight_decay 0.0 --test_num_segment 1 \
            --test_num_crop 1 --save_ckpt_freq 1000 --save_ckpt_steps 0 --log_every 1000 --no_auto_resume \
            --output_dir "$OUT/probe_${task}_$name"
    done
done

$PYTHON - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for name, label in (("sigma_mlp", "SIGMA-MLP"), ("videomae", "VideoMAE (pixel)"), ("random", "random init")):
    pre = os.path.join(out, name, "log.txt")
    epochs = [json.loads(line) for line in open(pre)] if os.path.exists(pre) else []
    row = {"encoder": label, "pretrain_loss": [round(epochs[0]["train_loss"], 3), round(epochs[-1]["train_loss"], 3)]
           if epochs else None}
    if epochs and "train_protos_used_target" in epochs[-1]:
        row["prototypes_used"] = [round(epochs[-1][f"train_protos_used_{s}"]) for s in ("target", "pred")]
    for task in ("motion", "shape"):
        knn = json.load(open(os.path.join(out, f"knn_{task}_{name}", "knn_results.json")))
        probe = [json.loads(line) for line in open(os.path.join(out, f"probe_{task}_{name}", "log.txt"))]
        row[f"{task}_probe"] = round(probe[-1]["val_acc1"], 1)
        row[f"{task}_probe_train"] = round(probe[-1]["train_acc1"] * 100, 1)
        row[f"{task}_knn20"] = round(knn["per_k"]["20"]["top1"], 1)
    print(json.dumps(row))
    rows.append(row)
lines = ["| encoder | motion (4 cl.): probe val / train, kNN-20 | shape (3 cl.): probe val / train, kNN-20 | "
         "pretrain loss first -> last | prototypes used (target, pred) |", "|---|---|---|---|---|"]
for r in rows:
    loss = " -> ".join(map(str, r["pretrain_loss"])) if r["pretrain_loss"] else "-"
    lines.append(f"| {r['encoder']} | {r['motion_probe']} / {r['motion_probe_train']}, {r['motion_knn20']} | "
                 f"{r['shape_probe']} / {r['shape_probe_train']}, {r['shape_knn20']} | {loss} | "
                 f"{r.get('prototypes_used', '-')} |")
open(os.path.join(out, "learning_signal.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
