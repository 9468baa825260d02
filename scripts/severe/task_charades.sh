#!/usr/bin/env bash
# SEVERE task shift (out of domain): multi-label action classification on Charades (157 classes, mAP).
# Expected numbers: see EVALUATION.md (Table III; the model card has no SEVERE row).
# Follows SEVERE (fmthoker/SEVERE-BENCHMARK SlowFast-ssl-vssl/configs/Charades/VSSL/
# 32x8_112x112_R18_moco_seed_1.yaml at commit 1f5860f3186add0d71074c4ba9258ff431e82b63): trained on
# Charades_v1_train.csv and tested on Charades_v1_test.csv, sigmoid outputs and BCE (LOSS_FUNC bce_logit,
# HEAD_ACT sigmoid; run_class_finetuning.py does this for --data_set Charades, evals/tasks.py), head dropout
# 0.5, 57 epochs of one clip per video, a clip spanning 256 frames (SEVERE: 32 frames 8 apart; ours 16
# frames 16 apart), and the test: 10 clips x 3 crops per video (NUM_ENSEMBLE_VIEWS 10,
# NUM_SPATIAL_CROPS 3) merged by max (ENSEMBLE_METHOD max), mAP over the classes with a positive video.
# Follows the SIGMA fine-tuning recipe (the ViT recipe of scripts/finetune/finetune_vitb_ucf101.sh:
# MCG-NJU/VideoMAE scripts/ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200/
# finetune.sh at commit cece3888324f509bcf298469ec5919cfc68987d7): AdamW, lr 5e-4 per 256 videos, layer
# decay 0.7, warmup 5 epochs then cosine, drop path 0.2, RandAugment and erasing, 8 GPUs x 16 = 128
# videos per step, 16 frames at 224 px (SEVERE's SGD at lr 0.0375 with step decay is an R(2+1)D-18
# recipe). No mixup, cutmix or label smoothing: they are single-label augmentations.
# Needs GPUs and data: CHARADES_ROOT (and CHARADES_ANNOTATIONS), PRETRAINED (a K400-pretrained
# checkpoint), OUTPUT_ROOT (scripts/common.sh). MODEL (default vit_base_patch16_224), BATCH_SIZE (per
# GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe; DEEPSPEED=1 adds
# --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=severe_task_charades
sigma_dataset charades
BATCH_SIZE=${BATCH_SIZE:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --run_name "$RUN" \
    --num_frames 16 --sampling_rate 16 --input_size 224 --short_side_size 224 --num_sample 1 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 5e-4 --layer_decay 0.7 \
    --warmup_epochs 5 --warmup_lr 1e-8 --min_lr 1e-5 --epochs 57 --fc_drop_rate 0.5 --use_checkpoint \
    --drop_path 0.2 --mixup 0 --cutmix 0 --smoothing 0 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 10 --test_num_crop 3 --dist_eval --save_ckpt_freq 19
