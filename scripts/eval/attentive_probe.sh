#!/usr/bin/env bash
# Attentive probe (V-JEPA 2's frozen evaluation): a grid of attentive poolers (a learnable query
# cross-attending over the frozen patch tokens, 4 blocks, 16 heads) + linear classifiers, one per
# (lr, weight decay) pair, all trained on the same frozen forward of each batch; the head best on
# validation is tested and reported (test_results.json: "head", every head in "per_head").
# DATASET=ssv2|k400|ucf101|hmdb51|imagenet|cifar100 picks the data, its sampling rate and its test
# views (SSv2 2x3, the other videos 5x3; images one centre crop of the image resized to 256).
# Expected numbers: none published for SIGMA (the paper has no attentive probe; EVALUATION.md).
# Derived from V-JEPA 2 (facebookresearch/vjepa2 configs/eval/vitl/ssv2-area-attn.yaml at commit
# 073e524aa7104c03f404202d9e8cd73007f4fe1b, the ssv2.yaml setup with its grid): 20 epochs, lr in {5e-3,
# 3e-3, 1e-3, 3e-4, 1e-4} x constant weight decay in {0.01, 0.1, 0.4, 0.8}, no warmup, cosine to 0,
# 256 clips per step (8 GPUs x 32 here; 64 GPUs x 4 there), one clip per video. Ours: --lr 1e-3 at 256
# clips per step with --probe_lr_scales 5 3 1 0.3 0.1 gives those five lrs; 16 frames at 224 px (the
# pretraining clip; V-JEPA 2: 16 frames at 256 px, 4 apart); no RandAugment, erasing or mixup (as
# our linear probe; --lp_augment keeps them).
# Needs GPUs and data: DATASET, its *_ROOT, PRETRAINED, OUTPUT_ROOT (scripts/common.sh); MODEL (default
# vit_base_patch16_224), BATCH_SIZE, GLOBAL_BATCH, EXTRA_ARGS and the script's arguments override.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
sigma_require DATASET "the data set to probe: ssv2, k400, ucf101, hmdb51, imagenet or cifar100"
RUN=attentive_probe_$DATASET
sigma_dataset "$DATASET"
BATCH_SIZE=${BATCH_SIZE:-32}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
views=(--short_side_size 224 --test_num_segment "$TEST_NUM_SEGMENT" --test_num_crop "$TEST_NUM_CROP")
if [[ "$SAMPLING_RATE" == 1 ]]; then  # images: the usual 0.875 centre crop
    views=(--short_side_size 256 --test_num_segment 1 --test_num_crop 1 --finetuning_crops 0.08 1.0)
fi
sigma_finetune --model "${MODEL:-vit_base_patch16_224}" --run_name "$RUN" --probe attentive \
    --probe_lr_scales 5 3 1 0.3 0.1 --probe_weight_decays 0.01 0.1 0.4 0.8 --probe_depth 4 --probe_num_heads 16 \
    --num_frames 16 --sampling_rate "$SAMPLING_RATE" --input_size 224 --num_sample 1 "${views[@]}" \
    --opt adamw --opt_betas 0.9 0.999 --lr 1e-3 --min_lr 0 --warmup_epochs 0 --epochs 20 \
    --dist_eval --save_ckpt_freq 5
