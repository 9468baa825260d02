#!/usr/bin/env bash
# Fine-tune a pretrained ViT-B/16 on Something-Something v2, then test with 2 clips x 3 crops per video.
# Expected top-1 (model card): SIGMA-DINO ViT-B 800 ep: 70.9; VideoMAE ViT-B 800 ep: 69.6 (16x2x3).
# Recipe: MCG-NJU/VideoMAE scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/
# finetune.sh at commit 26abf5397d3cbdfd1e836b44ada04d74aeb767fd (the recipe SIGMA's FINETUNE.md points
# to): 64 GPUs x 8 = 512 videos per step, lr 5e-4, 50 epochs, layer decay 0.75 (default).
# Disagreement: the SIGMA HEAD script, QUVA-Lab/SIGMA scripts_finetune/finetune_ssv2.sh at commit
# 3e36dea46efd0f48930625435ba51c8a247b89da, uses 8 GPUs x 4 = 32 videos, lr 1e-3 and 40 epochs:
# finetune_sigma_head_vitb_ssv2.sh.
# Needs GPUs and data: SSV2_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe;
# DEEPSPEED=1 adds the official scripts' --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=finetune_vitb_ssv2
sigma_dataset ssv2
BATCH_SIZE=${BATCH_SIZE:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-512}
sigma_finetune --model vit_base_patch16_224 \
    --num_frames 16 --input_size 224 --short_side_size 224 --num_sample 1 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 5e-4 --layer_decay 0.75 \
    --warmup_epochs 5 --warmup_lr 1e-6 --min_lr 1e-6 --epochs 50 \
    --drop_path 0.1 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 2 --test_num_crop 3 --dist_eval --save_ckpt_freq 10
