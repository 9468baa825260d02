#!/usr/bin/env bash
# SIGMA-MLP ViT-B/16 pretraining on Something-Something v2, 800 epochs: the projection network is a
# learnable MLP on normalised pixel tubes, no image teacher and no extra data.
# Not a row of the model card (the paper's MLP variant); fine-tune it like the DINO run.
# Recipe: no official SIGMA-MLP script. Derived: the SIGMA-DINO recipe of this row
# (sigma_dino_vitb_ssv2.sh, which names its sources) with --target_type mlp and no teacher.
# The official --epochs N+1 worked around a scheduler crash on the last epoch; ours has none.
# Needs GPUs and data: SSV2_ROOT, OUTPUT_ROOT (scripts/common.sh).
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=sigma_mlp_vitb_ssv2
sigma_dataset ssv2
BATCH_SIZE=${BATCH_SIZE:-32}
GLOBAL_BATCH=${GLOBAL_BATCH:-512}
sigma_pretrain --model pretrain_videomae_base_patch16_224 --target_type mlp --loss_func SWAV \
    --num_prototypes 3000 --sinkhorn_eps 0.03 --sinkhorn_iterations 10 \
    --mask_type tube --mask_ratio 0.9 --decoder_depth 4 --normalize_target True \
    --num_frames 16 --sampling_rate 2 --augmentation multi_scale_crop \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-5 --weight_decay 0.05 \
    --warmup_epochs 40 --epochs 800 --save_ckpt_freq 20
