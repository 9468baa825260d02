#!/usr/bin/env bash
# SIGMA-DINO ViT-S/16 pretraining on Kinetics-400, 800 epochs.
# Model card: top-1 79.4 (16x5x3) after fine-tuning (scripts/finetune/finetune_vits_k400.sh).
# Recipe: no official script for this row. Derived: the official ViT-S SSv2 script
# (QUVA-Lab/SIGMA scripts_pretrain/pretrain_ssv2_vit_s.sh at commit 4b39a643c82e9676bd802f2fe3bb153fd4930da7)
# (8 GPUs x 16 = 128 clips, DINO ViT-B/16 teacher) with the Kinetics settings of the official ViT-B
# K400 script (sampling rate 4, eps 0.05) and the model card's 800 epochs.
# The official --epochs N+1 worked around a scheduler crash on the last epoch; ours has none.
# Needs GPUs and data: K400_ROOT, DINO_WEIGHTS, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=sigma_dino_vits_k400
sigma_dataset k400
sigma_teacher "${TEACHER:-dino_b}"
BATCH_SIZE=${BATCH_SIZE:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
sigma_pretrain --model pretrain_videomae_small_patch16_224 "${TEACHER_ARGS[@]}" --loss_func SWAV \
    --num_prototypes 3000 --sinkhorn_eps 0.05 --sinkhorn_iterations 10 \
    --mask_type tube --mask_ratio 0.9 --decoder_depth 4 --normalize_target True \
    --num_frames 16 --sampling_rate 4 --augmentation multi_scale_crop \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-5 --weight_decay 0.05 \
    --warmup_epochs 40 --epochs 800 --save_ckpt_freq 20
