#!/usr/bin/env bash
# kNN evaluation of PRETRAINED's frozen features: the train split is the feature bank, each
# validation video votes with its k nearest neighbours (cosine similarity of L2-normalised pooled
# encoder features, weights exp(sim / temperature)); writes knn_results.json.
# DATASET=ssv2|k400|ucf101|hmdb51 picks the data and its sampling rate.
# Recipe: QUVA-Lab/SIGMA knn/run.sh evaluated SSv2 with 16 frames at 224 and batch 4 per GPU; k and
# the temperature are the usual weighted-kNN values (20, 0.07) of DINO's eval_knn.
# Needs GPUs and data: DATASET, <SET>_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh); MODEL
# (default vit_base_patch16_224), BATCH_SIZE, EXTRA_ARGS and the script's arguments override.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
sigma_require DATASET "the data set to evaluate: ssv2, k400, ucf101 or hmdb51"
RUN=knn_$DATASET
sigma_dataset "$DATASET"
sigma_knn --model "${MODEL:-vit_base_patch16_224}" \
    --num_frames 16 --sampling_rate "$SAMPLING_RATE" --input_size 224 \
    --batch_size "${BATCH_SIZE:-16}" --k 20 --temperature 0.07
