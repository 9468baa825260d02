#!/usr/bin/env bash
# Fine-tune a pretrained ViT-B/16 on Kinetics-400, then test with 5 clips x 3 crops per video.
# Expected top-1 (model card): SIGMA-DINO ViT-B 800 ep: 81.6; VideoMAE ViT-B 800 ep: 80.0 (16x5x3).
# Recipe: MCG-NJU/VideoMAE scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/
# finetune.sh at commit dd87594461537aa8398b902bc4589f0ccefd3edd (the recipe SIGMA's FINETUNE.md points
# to): 64 GPUs x 8 = 512 videos per step, lr 1e-3, 100 epochs, sampling rate 4, 5x3 test views.
# Disagreement: the SIGMA HEAD script, QUVA-Lab/SIGMA scripts_finetune/finetune_kinetics.sh at commit
# 9876f0925783fa417143cc5484788179aad0e90a, uses 8 GPUs x 4 = 32 videos, 100 epochs and 7x3 test
# views: finetune_sigma_head_vitb_k400.sh.
# Needs GPUs and data: K400_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe;
# DEEPSPEED=1 adds the official scripts' --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=finetune_vitb_k400
sigma_dataset k400
BATCH_SIZE=${BATCH_SIZE:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-512}
sigma_finetune --model vit_base_patch16_224 \
    --num_frames 16 --sampling_rate 4 --input_size 224 --short_side_size 224 --num_sample 1 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 1e-3 --layer_decay 0.75 \
    --warmup_epochs 5 --warmup_lr 1e-6 --min_lr 1e-6 --epochs 100 \
    --drop_path 0.1 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 5 --test_num_crop 3 --dist_eval --save_ckpt_freq 10
