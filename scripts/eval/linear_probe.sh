#!/usr/bin/env bash
# Linear probe: a linear classifier on the frozen, pooled encoder features of PRETRAINED.
# DATASET=ssv2|k400|ucf101|hmdb51 picks the data, its sampling rate and its test views (SSv2 2x3,
# the others 5x3). The paper compares frozen features this way (issue 5 quotes its K400 ViT-B
# numbers: SIGMA-MLP 30.7, VideoMAE 20.7); the model card has no linear-probe row.
# Recipe: QUVA-Lab/SIGMA scripts_finetune/linear_probing_ssv2.sh at commit
# 28947930afafc3753f5095bfa7f864c74e026b75: 8 GPUs x 24 x update_freq 2 = 384 videos per step,
# 2 clips per video, lr 1e-3, warmup lr 1e-6, 30 epochs. The official
# --linear_probing also trained the final norms with fine-tuning augmentation on; ours freezes the
# whole backbone in eval mode and trains without mixup, RandAugment or erasing (run_class_finetuning.py
# --lp_train_norms / --lp_augment restore the official variant).
# Needs GPUs and data: DATASET, <SET>_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh); MODEL
# (default vit_base_patch16_224), BATCH_SIZE, GLOBAL_BATCH, EXTRA_ARGS and the script's arguments
# override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
sigma_require DATASET "the data set to probe: ssv2, k400, ucf101 or hmdb51"
RUN=linear_probe_$DATASET
sigma_dataset "$DATASET"
BATCH_SIZE=${BATCH_SIZE:-24}
GLOBAL_BATCH=${GLOBAL_BATCH:-384}
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --linear_probing \
    --num_frames 16 --sampling_rate "$SAMPLING_RATE" --input_size 224 --short_side_size 224 --num_sample 2 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 1e-3 --warmup_lr 1e-6 --epochs 30 \
    --test_num_segment "$TEST_NUM_SEGMENT" --test_num_crop "$TEST_NUM_CROP" --dist_eval --save_ckpt_freq 10
