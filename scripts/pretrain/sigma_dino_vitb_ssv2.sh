#!/usr/bin/env bash
# SIGMA-DINO ViT-B/16 pretraining on Something-Something v2, 800 epochs.
# Model card: top-1 70.9 (16x2x3) after fine-tuning (scripts/finetune/finetune_vitb_ssv2.sh).
# Recipe: QUVA-Lab/SIGMA scripts_pretrain/pretrain_ssv2_vit_b_multi_node.sh at commit
# f16f367312a017af16e48c3ec118c6d6800ed530 (HEAD): 16 GPUs x 32 = 512 clips per step, eps 0.03.
# Disagreements: scripts_pretrain/pretrain_ssv2_vit_b_single_node.sh at commit
# d21c374f2a1252b44827f12c289c689069979bea uses 8 GPUs x 16 = 128 clips; the 64 GPUs x 32 = 2048 of
# PRETRAIN.md is first-commit text (13e9c1720be401f99e0512c77db10f2fb7c1ea89) copied from VideoMAE,
# not a SIGMA run (lr scales with the global batch either way).
# The official --epochs N+1 worked around a scheduler crash on the last epoch; ours has none.
# Needs GPUs and data: SSV2_ROOT, DINO_WEIGHTS, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=sigma_dino_vitb_ssv2
sigma_dataset ssv2
sigma_teacher "${TEACHER:-dino_b}"
BATCH_SIZE=${BATCH_SIZE:-32}
GLOBAL_BATCH=${GLOBAL_BATCH:-512}
sigma_pretrain --model pretrain_videomae_base_patch16_224 "${TEACHER_ARGS[@]}" --loss_func SWAV \
    --num_prototypes 3000 --sinkhorn_eps 0.03 --sinkhorn_iterations 10 \
    --mask_type tube --mask_ratio 0.9 --decoder_depth 4 --normalize_target True \
    --num_frames 16 --sampling_rate 2 --augmentation multi_scale_crop \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-5 --weight_decay 0.05 \
    --warmup_epochs 40 --epochs 800 --save_ckpt_freq 20
