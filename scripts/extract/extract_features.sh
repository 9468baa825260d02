#!/usr/bin/env bash
# Sliding-window features of untrimmed videos for temporal action detection (extract_features.py):
# OUTPUT_DIR/<video id>.npy [windows, C] (the layout ActionFormer / TriDet read), records/, index.json.
# Derived from OpenGVLab/VideoMAEv2 extract_tad_feature.py (commit
# fecbcfe73e03e841904eb81039b28b88c59acead), whose windows, resize, normalisation and pooling the
# presets reproduce: PRESET=thumos14 (default): 16 consecutive frames every 4 frames, full windows
# only, every frame resized to 224x224, / 255 without mean and std, fp32; PRESET=fineaction: the
# same every 16 frames; PRESET=none: extract_features.py's own defaults (ImageNet normalisation,
# the last frames covered by a padded window) with the flags given in EXTRA_ARGS.
# Needs: VIDEO_DIR (a folder of videos, or a list file whose lines start with a video path),
# PRETRAINED (ours, official SIGMA / VideoMAE, a transformers VideoMAE or VideoMAEv2 folder, or a
# .safetensors file), OUTPUT_ROOT (scripts/common.sh). MODEL (default vit_base_patch16_224),
# BATCH_SIZE (windows per forward, default 32), EXTRA_ARGS and the script's arguments override.
# One process per GPU, each extracting its own share of the videos; --resume is always on, so a
# rerun (or a requeued Slurm job) goes on where the last one stopped.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
sigma_require VIDEO_DIR "the folder of videos (or a list file of video paths) to extract features of"
PRESET=${PRESET:-thumos14}
preset=()
case "$PRESET" in
    thumos14|fineaction) preset=(--preset "$PRESET") ;;
    none) ;;
    *) sigma_die "PRESET must be thumos14, fineaction or none, not '$PRESET'" ;;
esac
RUN=features_$PRESET
sigma_eval_output
sigma_launch "$SIGMA_ROOT/extract_features.py" --data_path "$VIDEO_DIR" --finetune "$PRETRAINED" \
    --model "${MODEL:-vit_base_patch16_224}" "${preset[@]}" --batch_size "${BATCH_SIZE:-32}" --resume \
    --output_dir "$OUTPUT_DIR"
