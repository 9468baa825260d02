#!/usr/bin/env bash
# SEVERE sample size: fine-tune on 1,000 Gym99 training videos (class-balanced).
# Expected numbers: see EVALUATION.md (Table III; the model card has no SEVERE row).
# Follows SEVERE (fmthoker/SEVERE-BENCHMARK ssl_benchmark/configs/benchmark/gym99/
# 112x112x32_1000_examples.yaml at commit c420ff6dfb5ef929b7e676b9d2d415eda305b8f5): num_of_examples
# 1000 (--examples 1000: the official class-balanced subset, datasets/subset.py), tested on the
# whole gym99_val.txt; the training length in clips per video (16 epochs x 10 clips = 160, our 80
# epochs x 2 clips per video); the test: 10 clips per video, one centre crop of the frame resized to
# 256 (SEVERE's test_dense: 10 clips, Resize(crop / 0.875) + CenterCrop), softmax scores averaged.
# Follows the SIGMA fine-tuning recipe (the ViT recipe of scripts/finetune/finetune_vitb_ucf101.sh:
# MCG-NJU/VideoMAE scripts/ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200/
# finetune.sh at commit cece3888324f509bcf298469ec5919cfc68987d7): AdamW, lr 5e-4 per 256 videos,
# layer decay 0.7, warmup 5 epochs then cosine, drop path 0.2, head dropout 0.5, mixup / cutmix /
# RandAugment / erasing / smoothing, 8 GPUs x 16 = 128 videos per step, 16 frames at 224 px, 4 apart
# (about 2.1-2.6 s at 25-30 fps; SEVERE: 32 frames at 16 fps, 2 s at 112 px, an R(2+1)D-18 recipe
# that does not carry over to a ViT).
# Needs GPUs and data: GYM_ROOT, PRETRAINED (a K400-pretrained checkpoint: SEVERE measures how K400
# features transfer), OUTPUT_ROOT (scripts/common.sh). MODEL (default vit_base_patch16_224),
# BATCH_SIZE (per GPU), GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override the recipe;
# DEEPSPEED=1 adds --enable_deepspeed.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RUN=severe_samples_gym99_1000
sigma_dataset gym99
BATCH_SIZE=${BATCH_SIZE:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --run_name "$RUN" --examples 1000 \
    --num_frames 16 --sampling_rate 4 --input_size 224 --short_side_size 256 --num_sample 2 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 5e-4 --layer_decay 0.7 \
    --warmup_epochs 5 --warmup_lr 1e-8 --min_lr 1e-5 --epochs 80 --fc_drop_rate 0.5 --use_checkpoint \
    --drop_path 0.2 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 \
    --test_num_segment 10 --test_num_crop 1 --dist_eval --save_ckpt_freq 80
