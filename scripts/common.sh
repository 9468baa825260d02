# shellcheck shell=bash
# Shared plumbing of every launcher in scripts/: sourced, never run.
#
# A launcher sets its recipe's flags and calls sigma_pretrain, sigma_finetune or sigma_eval;
# this file adds the data and output paths, keeps the recipe's global batch on any number of
# GPUs, and starts the processes: torchrun on one node (the .sh files) or srun inside a Slurm
# job (the .sbatch files, which run the .sh with SIGMA_LAUNCHER=srun).
#
# Paths come from the environment; a missing one stops the launcher and says what to set:
#   OUTPUT_ROOT            every run writes to $OUTPUT_ROOT/<run name> (OUTPUT_DIR: one run's own dir)
#   SSV2_ROOT K400_ROOT UCF101_ROOT HMDB51_ROOT
#                          video folders: the prefix of the relative paths in the CSVs (DATASET.md)
#   <SET>_ANNOTATIONS      folder with train.csv, val.csv, test.csv (default: <SET>_ROOT/annotations)
#   GYM_ROOT               FineGym (GYM99, FX-S1, UB-S1): annotations/gym99_{train,val}.txt and subactions/
#   CHARADES_ROOT          Charades videos <id>.mp4; CHARADES_ANNOTATIONS: folder with
#                          Charades_v1_{train,test}.csv (default: CHARADES_ROOT/annotations)
#   UCFREP_ROOT            UCFRep counting: the folder holding annotations/{train,val}/*.mat;
#                          UCFREP_VIDEOS: the UCF101 .avi tree <Class>/v_*.avi (default: UCF101_ROOT)
#   IMAGENET_ROOT          ImageNet-1K train/ and val/ class folders; CIFAR100_ROOT: holds cifar-100-python/
#   DINO_WEIGHTS           folder with the DINO v1 releases dino_vitbase16_pretrain.pth and
#                          dino_deitsmall16_pretrain.pth (SIGMA-DINO; TEACHER_CKPT: one file)
#   PRETRAINED             checkpoint to fine-tune or evaluate (ours or an official release)
# Process layout:
#   torchrun: NPROC_PER_NODE (default: the visible GPUs), NNODES (1), NODE_RANK (0), MASTER_ADDR
#             and MASTER_PORT (needed when NNODES > 1)
#   Slurm:    sbatch's own options override the #SBATCH lines, e.g.
#             sbatch --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 scripts/pretrain/x.sbatch
#   BATCH_SIZE is per GPU; the recipe's global batch (GLOBAL_BATCH) is kept by gradient
#   accumulation, so the learning rate and schedule do not depend on the number of GPUs.
# Other knobs:
#   PYTHON (default: .venv/bin/python of the repository if present, else python3)
#   EXTRA_ARGS and the launcher's own arguments: flags appended to the command (the last one wins)
#   SIGMA_DEVICE=cpu       run on the CPU with gloo (CI and laptops); default: CUDA with nccl
#   SIGMA_DRY_RUN=1        print the command instead of running it
#   SRUN_ARGS              extra srun options; SIGMA_MAX_REQUEUES (default 50) caps self-requeues
#   DEEPSPEED=1            fine-tune with --enable_deepspeed as the official scripts did

set -euo pipefail

SIGMA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUEUE_EXIT_CODE=75  # the drivers' "preempted, checkpoint written, requeue me" status
# The launcher's own command-line arguments (a sourced file sees its caller's).
SIGMA_CLI_ARGS=("$@")

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$SIGMA_ROOT/.venv/bin/python" ]]; then PYTHON="$SIGMA_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

sigma_log() { echo "[sigma] $*" >&2; }

sigma_die() {
    echo "[sigma] error: $*" >&2
    exit 2
}

# sigma_require VAR "what it is": stop with a message when VAR is unset or empty.
sigma_require() {
    [[ -n "${!1:-}" ]] || sigma_die "$1 is not set: $2 (see the header of scripts/common.sh)"
}

# sigma_dataset NAME sets SET_NAME, NB_CLASSES (empty for UCFRep's count), VIDEO_ROOT, ANNOTATIONS
# (run_class_finetuning.py's --data_path) and, for the evaluation launchers, the dataset's
# SAMPLING_RATE and test views (TEST_NUM_SEGMENT x TEST_NUM_CROP: SSv2 2x3, the others 5x3 as in
# VideoMAE and SIGMA). NAME: ssv2 k400 ucf101 hmdb51 (CSV lists), gym99 fx_s1 ub_s1 (FineGym lists),
# charades, ucfrep, imagenet, cifar100.
sigma_dataset() {
    local prefix layout=csv
    case "$1" in
        ssv2)   prefix=SSV2;   SET_NAME=SSV2;         NB_CLASSES=174; SAMPLING_RATE=2; TEST_NUM_SEGMENT=2 ;;
        k400)   prefix=K400;   SET_NAME=Kinetics-400; NB_CLASSES=400; SAMPLING_RATE=4; TEST_NUM_SEGMENT=5 ;;
        ucf101) prefix=UCF101; SET_NAME=UCF101;       NB_CLASSES=101; SAMPLING_RATE=4; TEST_NUM_SEGMENT=5 ;;
        hmdb51) prefix=HMDB51; SET_NAME=HMDB51;       NB_CLASSES=51;  SAMPLING_RATE=4; TEST_NUM_SEGMENT=5 ;;
        gym99)  prefix=GYM; SET_NAME=GYM99; NB_CLASSES=99; SAMPLING_RATE=4; TEST_NUM_SEGMENT=5; layout=root ;;
        fx_s1)  prefix=GYM; SET_NAME=FX-S1; NB_CLASSES=11; SAMPLING_RATE=4; TEST_NUM_SEGMENT=5; layout=root ;;
        ub_s1)  prefix=GYM; SET_NAME=UB-S1; NB_CLASSES=15; SAMPLING_RATE=4; TEST_NUM_SEGMENT=5; layout=root ;;
        charades) prefix=CHARADES; SET_NAME=Charades; NB_CLASSES=157; SAMPLING_RATE=4; TEST_NUM_SEGMENT=5 ;;
        ucfrep) prefix=UCFREP; SET_NAME=UCFRep; NB_CLASSES=""; SAMPLING_RATE=4; TEST_NUM_SEGMENT=2; layout=ucfrep ;;
        imagenet) prefix=IMAGENET; SET_NAME=ImageNet; NB_CLASSES=1000; SAMPLING_RATE=1; TEST_NUM_SEGMENT=1
                  layout=root ;;
        cifar100) prefix=CIFAR100; SET_NAME=CIFAR-100; NB_CLASSES=100; SAMPLING_RATE=1; TEST_NUM_SEGMENT=1
                  layout=root ;;
        *) sigma_die "unknown dataset '$1' (choose ssv2, k400, ucf101, hmdb51, gym99, fx_s1, ub_s1, charades," \
               "ucfrep, imagenet or cifar100)" ;;
    esac
    TEST_NUM_CROP=3
    local root_var="${prefix}_ROOT" ann_var="${prefix}_ANNOTATIONS"
    case "$layout" in
        csv)
            sigma_require "$root_var" "the $SET_NAME video folder, prefix of the relative paths in its annotations"
            VIDEO_ROOT=${!root_var}
            ANNOTATIONS=${!ann_var:-$VIDEO_ROOT/annotations} ;;
        root)  # the driver reads the data set's own layout under one folder
            sigma_require "$root_var" "the $SET_NAME folder (DATASET.md, EVALUATION.md)"
            VIDEO_ROOT=${!root_var}
            ANNOTATIONS=$VIDEO_ROOT ;;
        ucfrep)
            sigma_require UCFREP_ROOT "the folder holding UCFRep's annotations/{train,val}/*.mat"
            ANNOTATIONS=$UCFREP_ROOT
            VIDEO_ROOT=${UCFREP_VIDEOS:-${UCF101_ROOT:-}}
            [[ -n "$VIDEO_ROOT" ]] || sigma_die "UCFREP_VIDEOS is not set: the UCF101 .avi tree <Class>/v_*.avi" \
                "(default: UCF101_ROOT; see the header of scripts/common.sh)" ;;
    esac
}

# sigma_teacher dino_b|dino_s sets TEACHER_ARGS: the DINO v1 ViT-B/16 or ViT-S/16 release.
sigma_teacher() {
    local file
    case "$1" in
        dino_b) file=dino_vitbase16_pretrain.pth ;;
        dino_s) file=dino_deitsmall16_pretrain.pth ;;
        *) sigma_die "unknown teacher '$1'" ;;
    esac
    if [[ -z "${TEACHER_CKPT:-}" ]]; then
        sigma_require DINO_WEIGHTS "folder with the DINO v1 weights ($file)"
    fi
    TEACHER_ARGS=(--target_type dino_v1 --distillation_teacher "$1" --teacher_ckpt "${TEACHER_CKPT:-$DINO_WEIGHTS/$file}")
}

# sigma_output RUN sets OUTPUT_DIR (unless given) to $OUTPUT_ROOT/RUN.
sigma_output() {
    if [[ -z "${OUTPUT_DIR:-}" ]]; then
        sigma_require OUTPUT_ROOT "folder under which each run gets its own output directory"
        OUTPUT_DIR="$OUTPUT_ROOT/$1"
    fi
}

# Number of processes the launcher will start.
sigma_world_size() {
    if [[ "${SIGMA_LAUNCHER:-torchrun}" == srun ]]; then
        sigma_require SLURM_NTASKS "SIGMA_LAUNCHER=srun runs inside a Slurm job: submit the .sbatch file"
        echo "$SLURM_NTASKS"
    else
        echo $(( ${NNODES:-1} * $(sigma_nproc_per_node) ))
    fi
}

sigma_nproc_per_node() {
    if [[ -n "${NPROC_PER_NODE:-}" ]]; then
        echo "$NPROC_PER_NODE"
    elif [[ "${SIGMA_DEVICE:-cuda}" != cpu && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .
    elif [[ "${SIGMA_DEVICE:-cuda}" != cpu ]] && command -v nvidia-smi >/dev/null; then
        nvidia-smi -L | grep -c '^GPU'
    else
        echo 1
    fi
}

# sigma_accum GLOBAL PER_GPU: micro-batches per optimiser step that make GLOBAL clips per step.
sigma_accum() {
    local world per_step
    world=$(sigma_world_size)
    per_step=$(( $2 * world ))
    (( per_step > 0 && $1 % per_step == 0 )) || sigma_die "global batch $1 is not a multiple of" \
        "BATCH_SIZE $2 x $world processes; set BATCH_SIZE or GLOBAL_BATCH (clips per optimiser step)"
    echo $(( $1 / per_step ))
}

# sigma_pretrain FLAGS...: run_sigma_pretraining.py on RUN's data (sigma_dataset) with the recipe
# FLAGS, per-GPU BATCH_SIZE and GLOBAL_BATCH.
sigma_pretrain() {
    sigma_output "$RUN"
    local accum
    accum=$(sigma_accum "$GLOBAL_BATCH" "$BATCH_SIZE")
    sigma_launch "$SIGMA_ROOT/run_sigma_pretraining.py" \
        --data_path "$VIDEO_ROOT" --data_path_csv "$ANNOTATIONS/train.csv" \
        --batch_size "$BATCH_SIZE" --accum_iter "$accum" "$@" \
        --output_dir "$OUTPUT_DIR" --run_name "$RUN"
}

# Output folder of an evaluation of PRETRAINED: $OUTPUT_ROOT/RUN/<pretraining run>-<checkpoint>,
# so evaluations of different checkpoints never resume from each other.
sigma_eval_output() {
    sigma_require PRETRAINED "the checkpoint to start from (a pretraining checkpoint-N.pth or an official release)"
    local parent stem
    parent=$(basename "$(dirname "$PRETRAINED")")
    stem=$(basename "$PRETRAINED" .pth)
    if [[ "$parent" == . || "$parent" == / ]]; then sigma_output "$RUN/$stem"; else sigma_output "$RUN/$parent-$stem"; fi
}

# sigma_finetune FLAGS...: run_class_finetuning.py from PRETRAINED on the dataset of
# sigma_dataset, per-GPU BATCH_SIZE and GLOBAL_BATCH (kept through --update_freq).
sigma_finetune() {
    sigma_eval_output
    local accum deepspeed=() classes=()
    accum=$(sigma_accum "$GLOBAL_BATCH" "$BATCH_SIZE")
    if [[ "${DEEPSPEED:-0}" == 1 ]]; then deepspeed=(--enable_deepspeed); fi
    if [[ -n "$NB_CLASSES" ]]; then classes=(--nb_classes "$NB_CLASSES"); fi  # UCFRep: one count output
    sigma_launch "$SIGMA_ROOT/run_class_finetuning.py" \
        --data_set "$SET_NAME" "${classes[@]}" --data_path "$ANNOTATIONS" --data_root "$VIDEO_ROOT" \
        --finetune "$PRETRAINED" --batch_size "$BATCH_SIZE" --update_freq "$accum" "$@" "${deepspeed[@]}" \
        --output_dir "$OUTPUT_DIR"
}

# sigma_knn FLAGS...: python -m evals.knn on PRETRAINED's frozen features of the sigma_dataset data.
sigma_knn() {
    sigma_eval_output
    sigma_launch -m evals.knn \
        --data_set "$SET_NAME" --nb_classes "$NB_CLASSES" --data_path "$ANNOTATIONS" --data_root "$VIDEO_ROOT" \
        --finetune "$PRETRAINED" "$@" --output_dir "$OUTPUT_DIR"
}

# sigma_launch SCRIPT ARGS... (or -m MODULE ARGS...): start SCRIPT (or the module, found through
# PYTHONPATH, SIGMA_ROOT first) with ARGS, then SIGMA_DEVICE, EXTRA_ARGS and the launcher's own
# arguments, through torchrun or (SIGMA_LAUNCHER=srun) srun.
sigma_launch() {
    local args=("$@") extra=()
    if [[ "$1" == -m ]]; then export PYTHONPATH="$SIGMA_ROOT${PYTHONPATH:+:$PYTHONPATH}"; fi
    if [[ "${SIGMA_DEVICE:-}" == cpu ]]; then args+=(--device cpu); fi
    read -r -d '' -a extra <<< "${EXTRA_ARGS:-}" || true  # split on spaces and newlines
    args+=("${extra[@]}" "${SIGMA_CLI_ARGS[@]}")
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    case "${SIGMA_LAUNCHER:-torchrun}" in
        torchrun) sigma_torchrun "${args[@]}" ;;
        srun) sigma_srun "${args[@]}" ;;
        *) sigma_die "SIGMA_LAUNCHER must be torchrun or srun, not '$SIGMA_LAUNCHER'" ;;
    esac
}

sigma_torchrun() {
    local nproc layout
    nproc=$(sigma_nproc_per_node)
    if (( ${NNODES:-1} > 1 )); then
        sigma_require MASTER_ADDR "address of the node with NODE_RANK=0 (multi-node torchrun)"
        sigma_require MASTER_PORT "a free TCP port on that node (multi-node torchrun)"
        layout=(--nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
        [[ "${SIGMA_DRY_RUN:-0}" == 1 ]] || sigma_check_master
    else
        layout=(--standalone --nnodes 1)
    fi
    local cmd=("$PYTHON" -m torch.distributed.run "${layout[@]}" --nproc_per_node "$nproc" "$@")
    if [[ "${SIGMA_DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; echo
        return 0
    fi
    sigma_log "torchrun: ${NNODES:-1} node(s) x $nproc process(es); output in ${OUTPUT_DIR:-?}"
    # Not exec: torchrun reports a worker's REQUEUE_EXIT_CODE as its own exit code 1 (and on
    # SIGTERM kills the workers 30 s later), so this shell stays to pass USR1/TERM to the workers
    # themselves and to give a requeue-able status when they saved a checkpoint after the signal.
    SIGMA_SRUN_PID="" SIGMA_PENDING_SIGNAL="" SIGMA_FORWARD_TO=children
    SIGMA_SIGNAL_STAMP=$(mktemp)
    trap 'sigma_forward USR1' USR1
    trap 'sigma_forward TERM' TERM
    "${cmd[@]}" &
    local pid=$! rc=0
    SIGMA_SRUN_PID=$pid
    if [[ -n "$SIGMA_PENDING_SIGNAL" ]]; then sigma_forward "$SIGMA_PENDING_SIGNAL"; fi
    wait "$pid" || rc=$?
    while kill -0 "$pid" 2>/dev/null; do
        rc=0
        wait "$pid" || rc=$?
    done
    trap - USR1 TERM
    if (( rc != 0 )) && [[ -n "${SIGMA_SIGNALLED:-}" ]] && sigma_saved_since "$SIGMA_SIGNAL_STAMP"; then
        sigma_log "preempted: checkpoint written after the signal (torchrun exit code $rc); exit $REQUEUE_EXIT_CODE"
        rc=$REQUEUE_EXIT_CODE
    fi
    rm -f "$SIGMA_SIGNAL_STAMP"
    exit "$rc"
}

# Before torchrun starts: MASTER_ADDR must resolve (within 10 s) and MASTER_PORT be a port (free on
# node 0). torchrun's own rendezvous would retry a bad address for its whole timeout on every node.
sigma_check_master() {
    local why
    why=$(cd "$SIGMA_ROOT" && "$PYTHON" -c 'import sys, distributed
print(distributed.rendezvous_problem(sys.argv[1], sys.argv[2], int(sys.argv[3])))' \
        "$MASTER_ADDR" "$MASTER_PORT" "${NODE_RANK:-0}" 2>&1) || sigma_die "cannot check MASTER_ADDR: $why"
    [[ -z "$why" ]] || sigma_die "node ${NODE_RANK:-0}: $why"
}

# sigma_saved_since FILE: whether a resumable checkpoint in OUTPUT_DIR is newer than FILE.
sigma_saved_since() {
    [[ -n "${OUTPUT_DIR:-}" && -d "$OUTPUT_DIR" ]] || return 1
    [[ -n "$(find "$OUTPUT_DIR" -maxdepth 2 -newer "$1" \( -name checkpoint-latest.pth -o -path '*/deepspeed/step-*' \) \
        -print -quit)" ]]
}

# One task per GPU; the drivers read their rank from Slurm's variables. The batch shell forwards
# USR1/TERM (sbatch --signal=B:USR1@T, scancel --signal=USR1 --batch, preemption) to srun, which
# passes them to every task; the drivers then write checkpoint-latest.pth and exit with
# REQUEUE_EXIT_CODE, and the job requeues itself and resumes from that checkpoint.
sigma_srun() {
    sigma_require SLURM_JOB_ID "SIGMA_LAUNCHER=srun runs inside a Slurm job: submit the .sbatch file"
    # srun no longer inherits sbatch's --cpus-per-task (Slurm >= 22.05): pass it on.
    if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
        export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}
    fi
    local srun_args=()
    read -r -d '' -a srun_args <<< "${SRUN_ARGS:-}" || true
    # --wait: kill the other tasks 10 minutes after the first one ends (a crashed rank would
    # otherwise leave the rest blocked in a collective). Not --kill-on-bad-exit: ranks exit with
    # REQUEUE_EXIT_CODE a moment apart, and killing the later ones would lose that status.
    local cmd=(srun --wait=600 "${srun_args[@]}" "$PYTHON" -u "$@")
    if [[ "${SIGMA_DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; echo
        return 0
    fi
    sigma_log "slurm job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS task(s) on" \
        "${SLURM_JOB_NODELIST:-?}; output in ${OUTPUT_DIR:-?}"
    # Traps first, so that a signal arriving while srun starts is not lost: it is passed on as soon
    # as srun's pid is known.
    SIGMA_SRUN_PID="" SIGMA_PENDING_SIGNAL=""
    trap 'sigma_forward USR1' USR1
    trap 'sigma_forward TERM' TERM
    "${cmd[@]}" &
    local pid=$! rc=0
    SIGMA_SRUN_PID=$pid
    if [[ -n "$SIGMA_PENDING_SIGNAL" ]]; then sigma_forward "$SIGMA_PENDING_SIGNAL"; fi
    # wait returns early whenever a trapped signal arrives; wait again until srun is gone.
    wait "$pid" || rc=$?
    while kill -0 "$pid" 2>/dev/null; do
        rc=0
        wait "$pid" || rc=$?
    done
    trap - USR1 TERM
    if (( rc != REQUEUE_EXIT_CODE )); then
        sigma_log "tasks finished with exit code $rc"
        exit "$rc"
    fi
    local restarts=${SLURM_RESTART_COUNT:-0}
    if (( restarts >= ${SIGMA_MAX_REQUEUES:-50} )); then
        sigma_die "preempted again after $restarts requeues; not requeueing (SIGMA_MAX_REQUEUES)"
    fi
    sigma_log "preempted: checkpoint written (exit code $rc); requeueing job $SLURM_JOB_ID"
    # Fails when Slurm's own preemption (PreemptMode=REQUEUE) has already requeued the job.
    scontrol requeue "$SLURM_JOB_ID" || sigma_die "scontrol requeue $SLURM_JOB_ID failed; if the job" \
        "does not come back by itself, submit the same script again: it resumes from $OUTPUT_DIR"
    exit 0
}

sigma_forward() {
    SIGMA_SIGNALLED=$1
    if [[ -n "${SIGMA_SIGNAL_STAMP:-}" ]]; then touch "$SIGMA_SIGNAL_STAMP"; fi
    if [[ -z "$SIGMA_SRUN_PID" ]]; then
        SIGMA_PENDING_SIGNAL=$1
        return
    fi
    if [[ "${SIGMA_FORWARD_TO:-}" == children ]]; then
        # torchrun's workers are its children; the agent itself would die of USR1.
        sigma_log "$1: forwarding to torchrun's workers"
        pkill -"$1" -P "$SIGMA_SRUN_PID" 2>/dev/null || true
    else
        sigma_log "$1: forwarding to the tasks"
        kill -"$1" "$SIGMA_SRUN_PID" 2>/dev/null || true
    fi
}
