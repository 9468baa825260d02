#!/usr/bin/env bash
# Fine-tune a pretrained ViT-S/16 on Kinetics-400, then test with 5 clips x 3 crops per video.
# Expected top-1 (model card): SIGMA-DINO ViT-S 800 ep: 79.4; VideoMAE ViT-S 1600 ep: 79.0 (16x5x3).
# Recipe: MCG-NJU/VideoMAE scripts/kinetics/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_1600/
# finetune.sh at commit 5cefe18cecab25e3cce8de88fad0b42e6ce858a7 (SIGMA publishes no ViT-S fine-tuning
# script): 32 GPUs x 12 = 384 videos per step,
# 2 augmented clips per video, lr 5e-4, 150 epochs, sampling rate 4.
# Needs GPUs and data: K400_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe;
# DEEPSPEED=1 adds the official scripts' --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=finetune_vits_k400
sigma_dataset k400
BATCH_SIZE=${BATCH_SIZE:-12}
GLOBAL_BATCH=${GLOBAL_BATCH:-384}
sigma_finetune --model vit_small_patch16_224 \
    --num_frames 16 --sampling_rate 4 --input_size 224 --short_side_size 224 --num_sample 2 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 5e-4 --layer_decay 0.75 \
    --warmup_epochs 5 --warmup_lr 1e-6 --min_lr 1e-6 --epochs 150 \
    --drop_path 0.1 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 5 --test_num_crop 3 --dist_eval --save_ckpt_freq 10
