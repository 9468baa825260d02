#!/usr/bin/env bash
# VideoMAE baseline: ViT-S/16 pretraining on Kinetics-400 with pixel targets (L2), 1600 epochs.
# Model card: top-1 79.0 (16x5x3) after fine-tuning (scripts/finetune/finetune_vits_k400.sh).
# Recipe: MCG-NJU/VideoMAE scripts/kinetics/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_1600/
# pretrain.sh at commit 5cefe18cecab25e3cce8de88fad0b42e6ce858a7: 32 GPUs x 32 = 1024 clips per step,
# sampling rate 4, 1600 epochs.
# The official --epochs N+1 worked around a scheduler crash on the last epoch; ours has none.
# Needs GPUs and data: K400_ROOT, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=videomae_vits_k400
sigma_dataset k400
BATCH_SIZE=${BATCH_SIZE:-32}
GLOBAL_BATCH=${GLOBAL_BATCH:-1024}
sigma_pretrain --model pretrain_videomae_small_patch16_224 --target_type pixel --loss_func L2 \
    --mask_type tube --mask_ratio 0.9 --decoder_depth 4 --normalize_target True \
    --num_frames 16 --sampling_rate 4 --augmentation multi_scale_crop \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-5 --weight_decay 0.05 \
    --warmup_epochs 40 --epochs 1600 --save_ckpt_freq 20
