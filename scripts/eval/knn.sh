#!/usr/bin/env bash
# kNN evaluation of PRETRAINED's frozen features; writes knn_results.json.
# Ours (default): the train split is the feature bank, each validation video (one centre clip) votes
# with its k = 20 nearest neighbours (cosine similarity of L2-normalised pooled encoder features,
# weights exp(sim / 0.07)), DINO's weighted kNN.
# OFFICIAL=1: the official protocol, QUVA-Lab/SIGMA eval_knn.py and knn/run.sh at commit
# 13e9c1720be401f99e0512c77db10f2fb7c1ea89: k = 200, temperature 0.07, the 2 x 3 test views of the
# test split (else val) are both the bank and the queries, features through the randomly initialised
# classification head (python -m evals.knn --official_protocol). run.sh evaluated SSv2 with 16
# frames at 224 and batch 4 per GPU.
# DATASET=ssv2|k400|ucf101|hmdb51 picks the data and its sampling rate.
# Needs GPUs and data: DATASET, <SET>_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh); MODEL
# (default vit_base_patch16_224), BATCH_SIZE, EXTRA_ARGS and the script's arguments override.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
sigma_require DATASET "the data set to evaluate: ssv2, k400, ucf101 or hmdb51"
RUN=knn_$DATASET
sigma_dataset "$DATASET"
protocol=(--k 20)
if [[ "${OFFICIAL:-0}" == 1 ]]; then
    RUN=knn_official_$DATASET
    protocol=(--official_protocol --k 200 --test_num_segment 2 --test_num_crop 3)
fi
sigma_knn --model "${MODEL:-vit_base_patch16_224}" \
    --num_frames 16 --sampling_rate "$SAMPLING_RATE" --input_size 224 \
    --batch_size "${BATCH_SIZE:-16}" --temperature 0.07 "${protocol[@]}"
