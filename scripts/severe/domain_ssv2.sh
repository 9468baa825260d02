#!/usr/bin/env bash
# SEVERE domain shift: fine-tune a K400-pretrained ViT on Something-Something v2.
# Expected numbers: see EVALUATION.md (Table III; the model card has no SEVERE row).
# Follows SEVERE (fmthoker/SEVERE-BENCHMARK action_recognition/configs/benchmark/something/112x112x32.yaml
# at commit d83427c375de4af69fcef9a1ecac172d52bdc11d): all of the SSv2 training set, tested on its
# validation set; the training length in clips per video (22 epochs x 2 clips = 44, ours 44 epochs x 1
# clip per video); the test: 10 clips per video, one centre crop of the frame resized to 256 (SEVERE's
# test_dense: 10 clips, Resize(crop / 0.875) + CenterCrop), softmax scores averaged.
# Follows the SIGMA fine-tuning recipe (the ViT recipe of scripts/finetune/finetune_vitb_ssv2.sh:
# MCG-NJU/VideoMAE scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/finetune.sh
# at commit 26abf5397d3cbdfd1e836b44ada04d74aeb767fd): AdamW, lr 5e-4 per 256 videos, layer decay 0.75,
# warmup 5 epochs then cosine, drop path 0.1, mixup / cutmix / RandAugment / erasing / smoothing, no
# flips, 64 GPUs x 8 = 512 videos per step, 16 frames at 224 px, one per segment (SEVERE: 32 frames at
# 16 fps, 112 px, an R(2+1)D-18 recipe that does not carry over to a ViT).
# Needs GPUs and data: SSV2_ROOT, PRETRAINED (a K400-pretrained checkpoint: SEVERE measures how K400
# features transfer), OUTPUT_ROOT (scripts/common.sh). MODEL (default vit_base_patch16_224), BATCH_SIZE
# (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe; DEEPSPEED=1 adds
# --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=severe_domain_ssv2
sigma_dataset ssv2
BATCH_SIZE=${BATCH_SIZE:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-512}
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --run_name "$RUN" \
    --num_frames 16 --input_size 224 --short_side_size 256 --num_sample 1 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 5e-4 --layer_decay 0.75 \
    --warmup_epochs 5 --warmup_lr 1e-6 --min_lr 1e-6 --epochs 44 \
    --drop_path 0.1 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 10 --test_num_crop 1 --dist_eval --save_ckpt_freq 11
