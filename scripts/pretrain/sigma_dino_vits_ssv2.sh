#!/usr/bin/env bash
# SIGMA-DINO ViT-S/16 pretraining on Something-Something v2, 2400 epochs.
# Model card: top-1 68.6 (16x2x3) after fine-tuning (scripts/finetune/finetune_vits_ssv2.sh).
# Recipe: QUVA-Lab/SIGMA scripts_pretrain/pretrain_ssv2_vit_s.sh at commit
# 4b39a643c82e9676bd802f2fe3bb153fd4930da7: 8 GPUs x 16 = 128 clips per step,
# eps 0.05, 2400 epochs, and the DINO ViT-B/16 teacher for the ViT-S student (TEACHER=dino_s
# uses the DINO ViT-S/16 release instead; the paper does not say which one its ViT-S row used).
# The official --epochs N+1 worked around a scheduler crash on the last epoch; ours has none.
# Needs GPUs and data: SSV2_ROOT, DINO_WEIGHTS, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=sigma_dino_vits_ssv2
sigma_dataset ssv2
sigma_teacher "${TEACHER:-dino_b}"
BATCH_SIZE=${BATCH_SIZE:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
sigma_pretrain --model pretrain_videomae_small_patch16_224 "${TEACHER_ARGS[@]}" --loss_func SWAV \
    --num_prototypes 3000 --sinkhorn_eps 0.05 --sinkhorn_iterations 10 \
    --mask_type tube --mask_ratio 0.9 --decoder_depth 4 --normalize_target True \
    --num_frames 16 --sampling_rate 2 --augmentation multi_scale_crop \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-5 --weight_decay 0.05 \
    --warmup_epochs 40 --epochs 2400 --save_ckpt_freq 20
