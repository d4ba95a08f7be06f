#!/bin/bash
# Submit the whole curriculum in one command (run it on the login node, not with sbatch):
#
#   1-frame pretraining -> 4-frame pretraining [-> MSR-VTT fine-tuning] [-> evaluation]
#
# each stage a job that starts only if the previous one COMPLETED (--dependency=afterok) and is cancelled at
# once if it did not (--kill-on-invalid-dep=yes: nothing is left pending forever, whatever the cluster's
# DependencyParameters). Prints one "STAGE JOBID" line per job on stdout; progress notes go to stderr.
#
#   bash slurm/curriculum.sh [--finetune] [--evaluate] [--name NAME]
#   NODES=4 GPUS_PER_NODE=8 RUN_DIR=runs/exp1 bash slurm/curriculum.sh --finetune --evaluate
#
# Environment (all optional):
#   RUN_DIR=runs/curriculum      stage outputs: RUN_DIR/1f, RUN_DIR/4f, RUN_DIR/msrvtt (and their tb/)
#   CONFIG_1F, CONFIG_4F, CONFIG_FT, CONFIG_EVAL
#                                configs (defaults configs/pretrain_1f.json, configs/pretrain_4f.json,
#                                configs/finetune_msrvtt_4f.json; evaluation: the evaluated run's config.json)
#   ARGS_1F, ARGS_4F, ARGS_FT, ARGS_EVAL
#                                extra launch/train.py / launch/evaluate.py arguments per stage, split on
#                                spaces, e.g. ARGS_1F="--set data.train[0].shards=/scratch/cc3m"
#   NODES, GPUS_PER_NODE, CPUS_PER_TASK, TIME
#                                resources of the training jobs (default: the scripts' #SBATCH lines);
#                                GPUS_PER_NODE=0 runs on CPUs (gloo) with TASKS_PER_NODE tasks per node (1)
#   SBATCH_ARGS                  extra sbatch arguments for every job, e.g. "--partition=gpu --account=me"
#                                (sbatch's own SBATCH_PARTITION / SBATCH_ACCOUNT variables work as well)
# Job logs: logs/<job name>-<job id>.out under the current directory (created here).
set -euo pipefail

FIT_ROOT=${FIT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
source "$FIT_ROOT/slurm/common.sh"

finetune=0 evaluate=0 name=fit
while [ $# -gt 0 ]; do
    case "$1" in
        --finetune) finetune=1 ;;
        --evaluate) evaluate=1 ;;
        --name) name=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) fit_die "unknown argument $1 (see: bash slurm/curriculum.sh --help)" ;;
    esac
    shift
done

run_dir=$(fit_abspath "${RUN_DIR:-runs/curriculum}")
config_1f=$(fit_config_path "${CONFIG_1F:-configs/pretrain_1f.json}" CONFIG_1F)
config_4f=$(fit_config_path "${CONFIG_4F:-configs/pretrain_4f.json}" CONFIG_4F)
if [ "$finetune" = 1 ]; then config_ft=$(fit_config_path "${CONFIG_FT:-configs/finetune_msrvtt_4f.json}" CONFIG_FT); fi

# sbatch options shared by the jobs; resources only where the user asked to change the scripts' defaults
read -r -a common <<<"${SBATCH_ARGS:-}"
train_res=()
[ -n "${NODES:-}" ] && train_res+=(--nodes="$NODES")
if [ -n "${GPUS_PER_NODE:-}" ]; then
    if [ "$GPUS_PER_NODE" = 0 ]; then
        train_res+=(--gpus-per-node=0 --ntasks-per-node="${TASKS_PER_NODE:-1}")
    else
        train_res+=(--gpus-per-node="$GPUS_PER_NODE" --ntasks-per-node="$GPUS_PER_NODE")   # one task per GPU
    fi
fi
[ -n "${CPUS_PER_TASK:-}" ] && train_res+=(--cpus-per-task="$CPUS_PER_TASK")
[ -n "${TIME:-}" ] && train_res+=(--time="$TIME")
eval_res=()
if [ -n "${GPUS_PER_NODE:-}" ]; then eval_res+=(--gpus-per-node=$((GPUS_PER_NODE > 0 ? 1 : 0))); fi
[ -n "${CPUS_PER_TASK:-}" ] && eval_res+=(--cpus-per-task="$CPUS_PER_TASK")

mkdir -p logs "$run_dir"
submit() {  # submit STAGE DEPENDENCY SBATCH_ARGS... -- SCRIPT ARGS...; prints the job id
    local stage=$1 dependency=$2 job
    shift 2
    local dep_args=()
    [ -n "$dependency" ] && dep_args=(--dependency="afterok:$dependency" --kill-on-invalid-dep=yes)
    job=$(sbatch --parsable --job-name="$name-$stage" "${dep_args[@]}" "${common[@]}" "$@") ||
        fit_die "sbatch refused the $stage job (arguments: $*)"
    job=${job%%;*}     # --parsable prints "jobid[;cluster]"
    echo "$stage $job"
    fit_log "$stage: job $job${dependency:+ (after $dependency succeeds)}, log logs/$name-$stage-$job.out"
    LAST_JOB=$job
}

# shellcheck disable=SC2086   # ARGS_* are split on spaces on purpose
CONFIG=$config_1f OUTPUT_DIR=$run_dir/1f \
    submit pretrain_1f "" "${train_res[@]}" "$FIT_ROOT/slurm/pretrain_1f.sh" ${ARGS_1F:-}
job_1f=$LAST_JOB
# shellcheck disable=SC2086
CONFIG=$config_4f OUTPUT_DIR=$run_dir/4f INIT_FROM=$run_dir/1f/weights/final \
    submit pretrain_4f "$job_1f" "${train_res[@]}" "$FIT_ROOT/slurm/pretrain_4f.sh" ${ARGS_4F:-}
evaluated=$run_dir/4f
if [ "$finetune" = 1 ]; then
    # shellcheck disable=SC2086
    CONFIG=$config_ft OUTPUT_DIR=$run_dir/msrvtt INIT_FROM=$run_dir/4f/weights/final \
        submit finetune_msrvtt "$LAST_JOB" "${train_res[@]}" "$FIT_ROOT/slurm/finetune_msrvtt.sh" ${ARGS_FT:-}
    evaluated=$run_dir/msrvtt
fi
if [ "$evaluate" = 1 ]; then
    # the evaluated run's own config.json (written by the trainer) unless CONFIG_EVAL says otherwise
    # shellcheck disable=SC2086
    CONFIG=${CONFIG_EVAL:-$evaluated/config.json} CHECKPOINT=$evaluated/weights/final \
        submit evaluate "$LAST_JOB" "${eval_res[@]}" "$FIT_ROOT/slurm/evaluate.sh" ${ARGS_EVAL:-}
fi
fit_log "outputs under $run_dir; TensorBoard for all stages: tensorboard --logdir $run_dir"
fit_log "watch: squeue -u ${USER:-$(id -un)}; a failed stage cancels the ones after it"
