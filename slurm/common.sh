# slurm/common.sh -- sourced by the job scripts in slurm/ (not run on its own). docs/SLURM.md is the guide.
#
# What lives here, once for every stage: the job banner, config/output resolution, the multi-node launch
# (srun by default, DeepSpeed's launcher as the alternative) and the preemption protocol:
#
#   #SBATCH --signal=USR1@600   (no "B:") SLURM sends SIGUSR1 to every task of the job's steps on every node,
#                               10 minutes before the time limit -- the same delivery path as
#                               `scancel --signal=USR1 JOBID`, which is how the tests preempt a job;
#   the trainer                 finishes its step, saves a checkpoint on all ranks, exits 75 (EXIT_PREEMPTED);
#   fit_train (below)           sees 75 and runs `scontrol requeue $SLURM_JOB_ID` (the job has --requeue);
#   the requeued job            starts again with the same job id, same log file (--open-mode=append),
#                               and `--resume auto` continues from the newest complete checkpoint.
#
# A batch shell that is itself signalled (`--signal=B:USR1@600`, or `scancel --signal=USR1 --batch`) forwards
# SIGUSR1 to the launcher, so that variant works too. SIGTERM (scancel, time limit, preemption by the
# scheduler) is never answered with a requeue: whoever sent it decides what happens to the job.

FIT_EXIT_PREEMPTED=75     # foundation.preemption.EXIT_PREEMPTED
PYTHON=${PYTHON:-python3}
# The jobs run this checkout's code, whatever else is installed.
export PYTHONPATH="$FIT_ROOT${PYTHONPATH:+:$PYTHONPATH}"

fit_log() { echo "[fit $(date '+%F %T')] $*" >&2; }
fit_die() { fit_log "error: $*"; exit 2; }

# Absolute form of a path given relative to the job's working directory (sbatch: the submission directory).
fit_abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

fit_banner() {  # fit_banner STAGE
    local tasks=${SLURM_NTASKS:-1}
    fit_log "$1: job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-interactive}) restart ${SLURM_RESTART_COUNT:-0}" \
            "on ${SLURM_JOB_NUM_NODES:-1} node(s) [${SLURM_JOB_NODELIST:-$(hostname)}], $tasks task(s)," \
            "GPUs per node ${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}, cwd $PWD, repo $FIT_ROOT"
}

# A config given relative is looked up in the working directory first, then in the repository.
fit_config_path() {  # fit_config_path CONFIG ENV_NAME
    local config=$1
    if [ -f "$config" ]; then fit_abspath "$config"; return; fi
    case "$config" in /*) ;; *) if [ -f "$FIT_ROOT/$config" ]; then echo "$FIT_ROOT/$config"; return; fi ;; esac
    fit_die "config $config not found (set $2=path/to/config.json; relative paths are taken from $PWD or $FIT_ROOT)"
}

# Sets FIT_CONFIG and FIT_OUTPUT_DIR (absolute) from $CONFIG (else DEFAULT) and $OUTPUT_DIR (else the config's).
fit_resolve_run() {  # fit_resolve_run DEFAULT_CONFIG
    FIT_CONFIG=$(fit_config_path "${CONFIG:-$1}" CONFIG) || exit 2
    local out
    out=${OUTPUT_DIR:-$(fit_config_value "$FIT_CONFIG" output_dir)} || exit 2
    [ -n "$out" ] || fit_die "$FIT_CONFIG has no output_dir and OUTPUT_DIR is not set"
    FIT_OUTPUT_DIR=$(fit_abspath "$out")
}

# The weights a stage starts from: $INIT_FROM, else the config's checkpoint.load_checkpoint; made absolute,
# and it must exist when the job starts.
# (At submission, FIT_CHECK=1, it need not exist yet: in a curriculum the previous stage writes it.)
fit_init_from() {  # fit_init_from CONFIG WHAT_IT_SHOULD_BE
    local init=${INIT_FROM:-} path
    [ -n "$init" ] || init=$(fit_config_value "$1" checkpoint.load_checkpoint)
    [ -n "$init" ] || fit_die "INIT_FROM is not set and $1 has no checkpoint.load_checkpoint: point it at $2"
    path=$(fit_abspath "$init")
    [ -e "$path" ] || [ "${FIT_CHECK:-0}" = 1 ] || fit_die "initial weights $init do not exist ($2; did that stage finish?)"
    echo "$path"
}

fit_config_value() {  # fit_config_value CONFIG DOTTED.KEY -> its value ("" when absent or null)
    "$PYTHON" - "$1" "$2" <<'PY' || fit_die "cannot read $1 as JSON"
import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value.get(key) if isinstance(value, dict) else None
print("" if value is None else value)
PY
}

fit_job_field() {  # fit_job_field NAME -> a field of `scontrol show job` for this job (e.g. StdOut)
    scontrol show job -o "${SLURM_JOB_ID:-0}" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}

fit_print_outputs() {  # fit_print_outputs OUTPUT_DIR
    fit_log "outputs: $1"
    fit_log "  TensorBoard:  tensorboard --logdir $1/tb"
    fit_log "  checkpoints:  $1/checkpoints (resumed automatically after a requeue)"
    fit_log "  metrics:      $1/metrics (final.json when the stage is done)"
    fit_log "  weights:      $1/weights/final (weights.safetensors + model_config.json)"
    fit_log "  job log:      $(fit_job_field StdOut)"
}

# "INDEX COUNT" of this array task, 0-based whatever the --array range (it must be one contiguous range).
fit_array_slice() {
    if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then echo "0 1"; return; fi
    local first=$SLURM_ARRAY_TASK_MIN count=$SLURM_ARRAY_TASK_COUNT
    if [ "${SLURM_ARRAY_TASK_STEP:-1}" != 1 ] || [ $((SLURM_ARRAY_TASK_MAX - first + 1)) != "$count" ]; then
        fit_die "--array must be one contiguous range like 0-15 (with an optional %limit), got" \
                "min $first max $SLURM_ARRAY_TASK_MAX step ${SLURM_ARRAY_TASK_STEP:-1} count $count"
    fi
    echo "$((SLURM_ARRAY_TASK_ID - first)) $count"
}

# ---- launch -----------------------------------------------------------------------------------------------
#
# Default: srun, one task per GPU (the allocation's --ntasks-per-node). Why srun rather than the deepspeed
# launcher: SLURM itself starts, tracks and signals every rank on every node -- `--signal` and scancel reach
# the trainers directly, a dead rank ends the step (srun --wait), accounting and cgroups see each
# rank, and no ssh/pdsh between compute nodes is needed (many sites forbid it). pipeline/train/distributed.py reads
# SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS and takes the rendezvous from the job itself: the first host of
# SLURM_JOB_NODELIST as MASTER_ADDR and a port derived from the job id, identical on every task.
#
# Alternative: LAUNCHER=deepspeed runs DeepSpeed's launcher once, in the batch shell, with a hostfile built
# from the node list (one line per node, slots = tasks per node); it reaches the other nodes over pdsh/ssh.
# Use it with `--ntasks-per-node=1` on sites where srun cannot place one task per GPU. SIGUSR1 then reaches
# the ranks only through the launcher: submit with `--signal=B:USR1@600` (the batch shell forwards it).

fit_write_hostfile() {  # fit_write_hostfile PATH SLOTS
    local host
    scontrol show hostnames "$SLURM_JOB_NODELIST" | while read -r host; do echo "$host slots=$2"; done > "$1"
}

fit_launch() {  # fit_launch SCRIPT ARGS... (in the background; sets FIT_LAUNCH_PID)
    local launcher=${LAUNCHER:-srun}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    case "$launcher" in
        srun)
            # --wait: once the first rank has ended, the others get FIT_TASK_GRACE seconds (default 120),
            # then SLURM kills them -- a crashed rank does not leave the rest waiting in a collective until
            # its timeout. Not --kill-on-bad-exit: a preempted rank exits 75, which would kill the ranks
            # still finishing their exit (tested: the job then fails instead of requeueing).
            srun --wait="${FIT_TASK_GRACE:-120}" --label "$PYTHON" -u "$@" &
            ;;
        deepspeed)
            local slots=${SLURM_NTASKS_PER_NODE:-${GPUS_PER_NODE:-1}} hostfile
            slots=${slots%%(*}
            hostfile="${TMPDIR:-/tmp}/fit-hostfile-${SLURM_JOB_ID:-$$}"
            fit_write_hostfile "$hostfile" "$slots"
            fit_log "deepspeed launcher, hostfile $hostfile: $(paste -sd' ' "$hostfile")"
            deepspeed --hostfile "$hostfile" --no_ssh_check \
                --master_addr "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)" \
                --master_port "$((20000 + ${SLURM_JOB_ID:-0} % 20000))" "$@" &
            ;;
        *) fit_die "LAUNCHER=$launcher: use srun (default) or deepspeed" ;;
    esac
    FIT_LAUNCH_PID=$!
}

# Wait for the launcher; a trapped signal interrupts `wait`, so wait again while it is still running.
fit_wait_launch() {
    local rc=0
    wait "$FIT_LAUNCH_PID" || rc=$?
    while kill -0 "$FIT_LAUNCH_PID" 2>/dev/null; do
        rc=0
        wait "$FIT_LAUNCH_PID" || rc=$?
    done
    return "$rc"
}

FIT_TERMINATING=0
fit_on_usr1() {
    fit_log "batch shell got SIGUSR1: forwarding it to the ranks (they checkpoint and exit $FIT_EXIT_PREEMPTED)"
    if [ -n "${FIT_LAUNCH_PID:-}" ]; then kill -USR1 "$FIT_LAUNCH_PID" 2>/dev/null || true; fi
}
fit_on_term() {
    FIT_TERMINATING=1
    fit_log "batch shell got SIGTERM (scancel, time limit or preemption): waiting for the ranks to stop"
}

# ---- a training stage ---------------------------------------------------------------------------------------

# Launch SCRIPT ARGS on every task and wait; the batch shell forwards SIGUSR1 and notes SIGTERM meanwhile.
fit_run_tasks() {  # fit_run_tasks SCRIPT ARGS... ; returns the launcher's exit code
    local rc=0
    trap fit_on_usr1 USR1
    trap fit_on_term TERM
    fit_launch "$@"
    fit_wait_launch || rc=$?
    trap - USR1 TERM
    return "$rc"
}

fit_train() {  # fit_train STAGE CONFIG OUTPUT_DIR [launch/train.py args ...]
    local stage=$1 config=$2 output_dir=$3 rc=0
    shift 3
    if [ "${FIT_CHECK:-0}" = 1 ]; then   # at submission: validate config + overrides + inputs, start nothing
        "$PYTHON" "$FIT_ROOT/launch/train.py" --check --ranks "${FIT_CHECK_RANKS:-1}" --config "$config" \
            --set "output_dir=$output_dir" "$@"
        return
    fi
    fit_banner "$stage"
    fit_log "config: $config"
    fit_print_outputs "$output_dir"
    fit_run_tasks "$FIT_ROOT/launch/train.py" --config "$config" --set "output_dir=$output_dir" \
        --resume auto "$@" || rc=$?
    if [ "$rc" = 0 ]; then
        fit_log "$stage finished: weights in $output_dir/weights/final, metrics in $output_dir/metrics"
        return 0
    fi
    if [ "$rc" = "$FIT_EXIT_PREEMPTED" ] && [ "$FIT_TERMINATING" = 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        fit_log "$stage preempted: checkpoint saved; requeueing job $SLURM_JOB_ID (it resumes with --resume auto)"
        if scontrol requeue "$SLURM_JOB_ID"; then
            exit 0      # SLURM ends this run and starts the job again; the exit code is not recorded
        fi
        fit_log "scontrol requeue failed (submitted with --no-requeue?): resubmit the same command to resume"
    fi
    fit_log "$stage failed with exit code $rc; see the ranks' lines above"
    exit "$rc"
}

# The body of every training stage script (pretrain_1f.sh, pretrain_4f.sh, finetune_msrvtt.sh): config and output
# folder from CONFIG / OUTPUT_DIR (else DEFAULT_CONFIG and its output_dir); a stage given INIT_WHAT starts from
# $INIT_FROM (else the config's checkpoint.load_checkpoint), logged with INIT_NOTE after it.
fit_train_stage() {  # fit_train_stage STAGE DEFAULT_CONFIG INIT_WHAT INIT_NOTE [launch/train.py args ...]
    local stage=$1 default_config=$2 init_what=$3 init_note=$4 init_from
    shift 4
    fit_resolve_run "$default_config"
    if [ -n "$init_what" ]; then
        init_from=$(fit_init_from "$FIT_CONFIG" "$init_what")
        fit_log "initial weights: $init_from$init_note"
        set -- --set "checkpoint.load_checkpoint=$init_from" "$@"
    fi
    fit_train "$stage" "$FIT_CONFIG" "$FIT_OUTPUT_DIR" "$@"
}

# ---- checks at submission (slurm/submit.sh, slurm/curriculum.sh) ---------------------------------------------
#
# A job that asks more than its partition has pends forever (Reason=PartitionConfig), and a bad config value
# used to surface only once the job had waited in the queue and started. Before anything is submitted:
#   fit_check_resources  compares the script's #SBATCH defaults + the options given with what the partition
#                        offers (launch/slurm_fit.py): a default that does not fit is lowered (FIT_FITTED),
#                        a given option that does not fit stops the submission with the option to lower;
#   fit_check_stage      runs the job script itself in check mode (FIT_CHECK=1): it resolves its config,
#                        output folder and initial weights exactly as the job will, and runs
#                        `launch/train.py --check` with the stage's overrides for the job's number of ranks.

fit_check_resources() {  # fit_check_resources WHAT SCRIPT [SBATCH OPTIONS...]; sets FIT_RANKS, FIT_FITTED
    local what=$1 script=$2 out
    shift 2
    out=$("$PYTHON" "$FIT_ROOT/launch/slurm_fit.py" --what "$what" "$script" "$@") || return 2
    FIT_RANKS=$(sed -n 's/^ranks //p' <<<"$out")
    FIT_FITTED=()
    local line
    while IFS= read -r line; do
        case "$line" in ranks\ *|"") ;; *) FIT_FITTED+=("$line") ;; esac
    done <<<"$out"
}

fit_check_stage() {  # fit_check_stage WHAT SCRIPT [ARGS...] (environment as for the job); prefixes WHAT
    local what=$1 out rc=0
    shift
    out=$(FIT_ROOT=$FIT_ROOT FIT_CHECK=1 FIT_CHECK_RANKS=${FIT_RANKS:-1} bash "$@" 2>&1) || rc=$?
    [ -z "$out" ] || sed "s/^/$what: /" <<<"$out" >&2
    return "$rc"
}
