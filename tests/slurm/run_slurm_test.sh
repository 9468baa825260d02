#!/usr/bin/env bash
# Our Slurm launchers against a real Slurm: installs Debian's slurmctld, slurmd and munge if they
# are missing (root), writes a one-node configuration for this machine, starts the daemons and
# submits the .sbatch files of scripts/ exactly as a GPU cluster would run them, with
# SIGMA_DEVICE=cpu (gloo) and 2 tasks on the one node:
#   1. a tiny SIGMA-MLP pretraining (scripts/pretrain/sigma_mlp_vits_k400.sbatch): checkpoints,
#      log.txt, both ranks;
#   2. preemption: USR1 to the batch shell of a longer run (what --signal=B:USR1@300 sends before
#      the time limit); the run must save, exit with 75, requeue itself, resume from
#      checkpoint-latest.pth and finish;
#   3. a tiny fine-tuning from case 1's checkpoint (scripts/finetune/finetune_vits_k400.sbatch) and
#      scripts/collect_results.py's table of it.
# Anything that does not work (installing, starting a daemon, a job) fails the script with the
# reason and the logs; nothing is skipped. About 3 minutes on 2 cores. Daemons and jobs started
# here are stopped at exit; the work folder (SLURM_TEST_DIR, default a new /tmp folder) is kept.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${SLURM_TEST_DIR:-$(mktemp -d /tmp/sigma-slurm.XXXXXX)}
CONF_DIR=$WORK/slurm
export SLURM_CONF=$CONF_DIR/slurm.conf
JOBS=()
DAEMON_PIDS=()
T0=$SECONDS

log() { echo "[slurm-test +$((SECONDS - T0))s] $*"; }

dump_logs() {
    local f
    for f in "$WORK"/*.out "$CONF_DIR"/slurmctld.log "$CONF_DIR"/slurmd.log; do
        [[ -f "$f" ]] || continue
        echo "----- last lines of $f" >&2
        tail -n 40 "$f" >&2
    done
}

fail() {
    echo "[slurm-test] FAILED: $*" >&2
    dump_logs
    exit 1
}

cleanup() {
    local status=$?
    if (( ${#JOBS[@]} )); then scancel "${JOBS[@]}" 2>/dev/null || true; fi
    local pid deadline=$((SECONDS + 15))
    for pid in "${DAEMON_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${DAEMON_PIDS[@]}"; do  # gone before the next run binds the same ports
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    done
    # Checkpoints make the folder a few GB: kept for a post-mortem only when something failed.
    if (( status == 0 )) && [[ -z ${SLURM_TEST_DIR:-} ]]; then
        rm -rf "$WORK"
    else
        log "work folder kept: $WORK"
    fi
}
trap cleanup EXIT

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [[ $(id -u) == 0 ]] || fail "slurmctld, slurmd, sbatch or munged is missing and installing them needs root"
    log "installing Debian's slurm and munge"
    apt-get update -qq >"$WORK/apt.log" 2>&1 || { tail "$WORK/apt.log" >&2; fail "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >>"$WORK/apt.log" 2>&1 \
        || { tail "$WORK/apt.log" >&2; fail "apt-get install of slurmctld slurmd slurm-client munge failed"; }
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile /etc/munge/munge.key || fail "cannot create /etc/munge/munge.key"
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    runuser -u munge -- munged || fail "munged did not start (see /var/log/munge/munged.log)"
    DAEMON_PIDS+=("$(cat /run/munge/munged.pid)")
    munge -n | unmunge >/dev/null || fail "munge credentials do not round-trip through unmunge"
}

# A one-node cluster on localhost. proctrack/linuxproc and task/none need no cgroups (containers
# and CI machines often have none writable); root runs the daemons and the jobs.
write_config() {
    local host node cpus
    host=$(hostname -s)
    node=$(slurmd -C | head -n 1 | sed 's/ UpTime=.*//')
    [[ "$node" == NodeName=* ]] || fail "slurmd -C did not describe this node: $node"
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    (( cpus >= 2 )) || fail "this machine has $cpus CPU(s); the test runs 2 tasks of 1 CPU each"
    mkdir -p "$CONF_DIR/state" "$CONF_DIR/spool"
    cat >"$SLURM_CONF" <<EOF
ClusterName=sigmaci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$CONF_DIR/state
SlurmdSpoolDir=$CONF_DIR/spool
SlurmctldPidFile=$CONF_DIR/slurmctld.pid
SlurmdPidFile=$CONF_DIR/slurmd.pid
SlurmctldLogFile=$CONF_DIR/slurmctld.log
SlurmdLogFile=$CONF_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
MinJobAge=3600
KillWait=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
    slurmctld -D -c -f "$SLURM_CONF" >"$CONF_DIR/slurmctld.stdout" 2>&1 &
    DAEMON_PIDS+=($!)
    slurmd -D -f "$SLURM_CONF" >"$CONF_DIR/slurmd.stdout" 2>&1 &
    DAEMON_PIDS+=($!)
    local state="" deadline=$((SECONDS + 60))
    while (( SECONDS < deadline )); do
        state=$(sinfo -h -o %T 2>/dev/null || true)
        [[ "$state" == idle ]] && break
        for pid in "${DAEMON_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { cat "$CONF_DIR"/*.stdout >&2; fail "a Slurm daemon exited at start (its 'fatal:' line above)"; }
        done
        sleep 1
    done
    [[ "$state" == idle ]] || fail "the node did not become idle within 60 s (sinfo says '$state')"
    log "slurm $(sinfo -V) up: $(sinfo -h -o '%N %c CPUs %T')"
}

# job_field ID NAME: one field of `scontrol show job`.
job_field() {
    scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

# wait_job ID SECONDS: wait until the job has ended; fail when it is still running afterwards.
wait_job() {
    local id=$1 deadline=$((SECONDS + $2)) state reason
    while (( SECONDS < deadline )); do
        state=$(job_field "$id" JobState)
        reason=$(job_field "$id" Reason)
        case "$state" in
            COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) return ;;
        esac
        # Slurm holds a requeued job for about two minutes (a fixed delay) before it may start
        # again; clearing that hold keeps the test short and changes nothing else. slurmd rejects
        # a job credential issued in the same second as the revocation of the previous run's
        # ("Job credential revoked"), so the hold is cleared a few seconds after the requeue.
        if [[ "$state" == PENDING && "$reason" == BeginTime && "$(job_field "$id" Restarts)" != 0 ]]; then
            sleep 3
            scontrol update JobId="$id" StartTime=now
        fi
        sleep 2
    done
    fail "job $id did not finish within $2 s (state $state, reason $reason)"
}

# submit NAME SCRIPT [sbatch options...]: sbatch a launcher of scripts/ from the repository root
# with the CI layout (1 node, 2 tasks of 1 CPU, no GPUs); prints the job id.
submit() {
    local name=$1 script=$2
    shift 2
    local id
    id=$(cd "$ROOT" && sbatch --parsable --job-name "$name" --nodes 1 --ntasks-per-node 2 --cpus-per-task 1 \
        --gpus-per-node 0 --time 15 --output "$WORK/$name.out" "$@" "$script") || fail "sbatch $script failed"
    JOBS+=("$id")
    echo "$id"
}

expect_completed() {
    local id=$1 name=$2
    [[ "$(job_field "$id" JobState)" == COMPLETED && "$(job_field "$id" ExitCode)" == 0:0 ]] \
        || fail "$name: job $id ended $(job_field "$id" JobState) with exit code $(job_field "$id" ExitCode)"
}

[[ -x "$PYTHON" ]] || fail "no Python at $PYTHON: create the virtual environment (README Quick start) or set PYTHON"
install_slurm
start_munge
write_config
start_slurm

DATA=$WORK/data
# 28 training videos: 7 steps per epoch at 2 tasks x 2 clips, so the ranks' preemption agreement
# (every 10 steps) falls inside an epoch and the resume has to continue mid-epoch.
"$PYTHON" -m datasets.synthetic --out "$DATA" --num_train 28 --num_val 8 --num_test 8 --frames 32 \
    >"$WORK/data.log" 2>&1 || { cat "$WORK/data.log" >&2; fail "generating the synthetic videos failed"; }
export PYTHON SIGMA_DEVICE=cpu K400_ROOT=$DATA K400_ANNOTATIONS=$DATA OUTPUT_ROOT=$WORK/runs
export BATCH_SIZE=2 GLOBAL_BATCH=4 SIGMA_ROOT=$ROOT
TINY="--input_size 32 --num_frames 4 --sampling_rate 2 --num_workers 1 --warmup_epochs 1 --num_prototypes 64"

log "case 1: tiny SIGMA-MLP pretraining, 2 tasks"
export EXTRA_ARGS="$TINY --epochs 2 --save_ckpt_freq 1"
job=$(submit pretrain scripts/pretrain/sigma_mlp_vits_k400.sbatch)
wait_job "$job" 240
expect_completed "$job" "tiny pretraining"
RUN1=$OUTPUT_ROOT/sigma_mlp_vits_k400
for f in config.json log.txt train.log checkpoint-0.pth checkpoint-1.pth checkpoint-latest.pth; do
    [[ -s "$RUN1/$f" ]] || fail "tiny pretraining: $RUN1/$f is missing"
done
"$PYTHON" - "$RUN1" <<'EOF' || fail "tiny pretraining: unexpected config.json or log.txt (above)"
import json, math, sys
run = sys.argv[1]
config = json.load(open(f"{run}/config.json"))
epochs = [json.loads(line) for line in open(f"{run}/log.txt")]
assert config["world_size"] == 2 and config["device"] == "cpu", config
assert [e["epoch"] for e in epochs] == [0, 1], epochs
assert all(math.isfinite(e["train_loss"]) for e in epochs), epochs
EOF
grep -q "slurm job $job (restart 0): 2 task(s)" "$WORK/pretrain.out" \
    || fail "tiny pretraining: the launcher did not start 2 tasks through srun"
log "case 1 passed: $(wc -l <"$RUN1/log.txt") epochs, world size 2, checkpoints written"

log "case 2: preemption (USR1 to the batch shell), requeue and resume"
export OUTPUT_DIR=$WORK/runs/preempted EXTRA_ARGS="$TINY --epochs 8 --save_ckpt_freq 4"
job=$(submit preempt scripts/pretrain/sigma_mlp_vits_k400.sbatch)
deadline=$((SECONDS + 180))
until [[ -s "$OUTPUT_DIR/checkpoint-latest.pth" ]]; do
    (( SECONDS < deadline )) || fail "preemption: the run wrote no checkpoint within 180 s"
    [[ "$(job_field "$job" JobState)" =~ ^(PENDING|RUNNING)$ ]] || fail "preemption: job $job ended before the signal"
    sleep 1
done
scancel --signal=USR1 --batch "$job"
wait_job "$job" 300
unset OUTPUT_DIR
expect_completed "$job" "preempted pretraining"
PRE=$WORK/runs/preempted
[[ "$(job_field "$job" Restarts)" == 1 ]] || fail "preemption: job $job restarted $(job_field "$job" Restarts) times, expected 1"
grep -q "exit code 75); requeueing job $job" "$WORK/preempt.out" \
    || fail "preemption: the launcher did not see exit code 75 and requeue the job"
grep -q "resumed from $PRE/checkpoint-latest.pth" "$PRE/train.log" \
    || fail "preemption: train.log has no 'resumed from $PRE/checkpoint-latest.pth'"
"$PYTHON" - "$PRE" <<'EOF' || fail "preemption: log.txt does not hold each of the 8 epochs once (above)"
import json, sys
epochs = [json.loads(line)["epoch"] for line in open(f"{sys.argv[1]}/log.txt")]
assert epochs == list(range(8)), epochs
EOF
[[ -s "$PRE/checkpoint-7.pth" ]] || fail "preemption: the resumed run did not write checkpoint-7.pth"
log "case 2 passed: $(grep -o 'resumed from [^ ]* at epoch [0-9]*, step [0-9]*' "$PRE/train.log")"

log "case 3: tiny fine-tuning from case 1's checkpoint, 2 tasks, 2x3 test views"
export PRETRAINED=$RUN1/checkpoint-1.pth
export EXTRA_ARGS="--nb_classes 4 --input_size 32 --short_side_size 32 --num_frames 4 --sampling_rate 2
    --num_workers 1 --epochs 1 --warmup_epochs 0 --test_num_segment 2 --test_num_crop 3"
job=$(submit finetune scripts/finetune/finetune_vits_k400.sbatch)
wait_job "$job" 240
expect_completed "$job" "tiny fine-tuning"
FT=$OUTPUT_ROOT/finetune_vits_k400/sigma_mlp_vits_k400-checkpoint-1
for f in config.json log.txt test_results.json predictions.csv; do
    [[ -s "$FT/$f" ]] || fail "tiny fine-tuning: $FT/$f is missing"
done
table=$("$PYTHON" "$ROOT/scripts/collect_results.py" "$OUTPUT_ROOT") || fail "collect_results.py failed"
echo "$table"
grep -qF "| SIGMA-MLP | no | ViT-S | K400 | fine-tune | 4x2x3 | 2 |" <<<"$table" \
    || fail "collect_results.py: no row for the SIGMA-MLP ViT-S, 2 pretraining epochs, K400 fine-tuning"
log "case 3 passed"

log "all Slurm cases passed in $((SECONDS - T0)) s"
