#!/usr/bin/env bash
# Linear probe of a video encoder on images (the image columns of the paper's Table I): a linear
# classifier on the frozen, pooled features of PRETRAINED, each image read as a clip of 16 copies
# (datasets/images.py says why 16).
# DATASET=imagenet|cifar100: ImageNet-1K (IMAGENET_ROOT: train/ and val/ class folders; tested on
# val) or CIFAR-100 (CIFAR100_ROOT: the folder holding cifar-100-python/; tested on its test batch).
# Expected top-1 (SIGMA project page, Benchmark I, K400-pretrained ViT-B): SIGMA-DINO ImageNet-1K
# 45.0, CIFAR-100 66.7 (EVALUATION.md).
# Derived from the video linear probe (scripts/eval/linear_probe.sh: QUVA-Lab/SIGMA
# scripts_finetune/linear_probing_ssv2.sh at commit 28947930afafc3753f5095bfa7f864c74e026b75: 384 clips
# per step, lr 1e-3, warmup lr 1e-6, 30 epochs, AdamW, weight decay 0.05); the image parts are the
# standard image linear probe's: training crops of area 0.08-1 and flips, test one 224 centre crop of
# the image resized to 256. SIGMA publishes no image-probe script.
# Needs GPUs and data: DATASET, IMAGENET_ROOT or CIFAR100_ROOT, PRETRAINED, OUTPUT_ROOT
# (scripts/common.sh); MODEL (default vit_base_patch16_224), BATCH_SIZE, GLOBAL_BATCH, EXTRA_ARGS and
# the script's arguments override the recipe.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
sigma_require DATASET "the image set to probe: imagenet or cifar100"
[[ "$DATASET" == imagenet || "$DATASET" == cifar100 ]] || sigma_die "DATASET must be imagenet or cifar100," \
    "not '$DATASET' (video sets: scripts/eval/linear_probe.sh)"
RUN=image_linear_probe_$DATASET
sigma_dataset "$DATASET"
BATCH_SIZE=${BATCH_SIZE:-48}
GLOBAL_BATCH=${GLOBAL_BATCH:-384}
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --run_name "$RUN" --linear_probing \
    --num_frames 16 --input_size 224 --short_side_size 256 --num_sample 1 --finetuning_crops 0.08 1.0 \
    --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --lr 1e-3 --warmup_lr 1e-6 --epochs 30 \
    --test_num_segment 1 --test_num_crop 1 --dist_eval --save_ckpt_freq 10
