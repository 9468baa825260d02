#!/usr/bin/env bash
# VideoMAE baseline: ViT-B/16 pretraining on Something-Something v2 with pixel targets (L2), 800 epochs.
# Model card: top-1 69.6 (16x2x3) after fine-tuning (scripts/finetune/finetune_vitb_ssv2.sh).
# Recipe: MCG-NJU/VideoMAE scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800/
# pretrain.sh at commit ed5ce1f2cc1604f64232083c934c0407fc1c5076: 64 GPUs x 32 = 2048 clips per step.
# The official --epochs N+1 worked around a scheduler crash on the last epoch; ours has none.
# Needs GPUs and data: SSV2_ROOT, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=videomae_vitb_ssv2
sigma_dataset ssv2
BATCH_SIZE=${BATCH_SIZE:-32}
GLOBAL_BATCH=${GLOBAL_BATCH:-2048}
sigma_pretrain --model pretrain_videomae_base_patch16_224 --target_type pixel --loss_func L2 \
    --mask_type tube --mask_ratio 0.9 --decoder_depth 4 --normalize_target True \
    --num_frames 16 --sampling_rate 2 --augmentation multi_scale_crop \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-5 --weight_decay 0.05 \
    --warmup_epochs 40 --epochs 800 --save_ckpt_freq 20
