#!/usr/bin/env bash
# Fine-tune a pretrained ViT-B/16 on Something-Something v2 exactly as the official SIGMA HEAD script,
# then test with 2 clips x 3 crops per video.
# Recipe: QUVA-Lab/SIGMA scripts_finetune/finetune_ssv2.sh at commit
# 3e36dea46efd0f48930625435ba51c8a247b89da: 8 GPUs x 4 = 32 videos per step (no update_freq), one
# clip per video, lr 1e-3 (scaled by 32 / 256 as the official run_class_finetuning.py), warmup lr 1e-6,
# 40 epochs, 2x3 test views; everything else the official defaults of run_class_finetuning.py at
# commit d21c374f2a1252b44827f12c289c689069979bea (ours are the same). finetune_vitb_ssv2.sh follows
# the VideoMAE recipe instead.
# Needs GPUs and data: SSV2_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe;
# DEEPSPEED=1 adds --enable_deepspeed (the official SIGMA scripts do not use it).
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=finetune_sigma_head_vitb_ssv2
sigma_dataset ssv2
BATCH_SIZE=${BATCH_SIZE:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}
sigma_finetune --model vit_base_patch16_224 \
    --num_frames 16 --input_size 224 --short_side_size 224 --num_sample 1 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 1e-3 --layer_decay 0.75 \
    --warmup_epochs 5 --warmup_lr 1e-6 --min_lr 1e-6 --epochs 40 \
    --drop_path 0.1 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --finetuning_crops 0.25 1.0 --test_num_segment 2 --test_num_crop 3 --dist_eval --save_ckpt_freq 100
