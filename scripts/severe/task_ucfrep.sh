#!/usr/bin/env bash
# SEVERE task shift (in domain): repetition counting on UCFRep (UCF101 videos; normalised MAE, lower is
# better, and off-by-one accuracy).
# Expected numbers: see EVALUATION.md (Table III; the model card has no SEVERE row).
# Follows SEVERE (fmthoker/SEVERE-BENCHMARK Repetition-Counting/opts.py at commit
# 8cedb9cb2fb0583a1d560df8e0c853e7487d3aa2, and its datasets/ucf_aug.py): UCFRep's train split for
# training and its val split as the test set, videos with fewer than 2 repetitions left out, 100 epochs,
# the metrics (MAE = mean |predicted - true| / true, OBO = share within one repetition;
# evals/severe_metrics.py).
# Differs from SEVERE: SEVERE trains Zhang et al.'s context-aware counting model (a sliding window that
# predicts repetition cycles and refines its scale); ours regresses the count directly from one clip of
# 16 frames spread over the whole video (segment sampling; L1 loss on the count, evals/tasks.py), the test
# views (2 clips x 3 crops, as our segment-sampled SSv2 test) averaged.
# Follows the SIGMA fine-tuning recipe (the ViT recipe of scripts/finetune/finetune_vitb_ucf101.sh:
# MCG-NJU/VideoMAE scripts/ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200/
# finetune.sh at commit cece3888324f509bcf298469ec5919cfc68987d7): AdamW, lr 5e-4 per 256 videos, layer
# decay 0.7, warmup 5 epochs then cosine, drop path 0.2, RandAugment and erasing, 16 frames at 224 px;
# 8 GPUs x 4 = 32 videos per step (SEVERE's batch: the ~420 training videos give 13 steps per epoch).
# No mixup, cutmix or label smoothing: they are classification augmentations.
# Needs GPUs and data: UCFREP_ROOT, UCFREP_VIDEOS (or UCF101_ROOT: the .avi tree), PRETRAINED (a
# K400-pretrained checkpoint), OUTPUT_ROOT (scripts/common.sh). MODEL (default vit_base_patch16_224),
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe;
# DEEPSPEED=1 adds --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=severe_task_ucfrep
sigma_dataset ucfrep
BATCH_SIZE=${BATCH_SIZE:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --run_name "$RUN" \
    --num_frames 16 --input_size 224 --short_side_size 224 --num_sample 1 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 5e-4 --layer_decay 0.7 \
    --warmup_epochs 5 --warmup_lr 1e-8 --min_lr 1e-5 --epochs 100 --use_checkpoint \
    --drop_path 0.2 --mixup 0 --cutmix 0 --smoothing 0 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 2 --test_num_crop 3 --dist_eval --save_ckpt_freq 50
