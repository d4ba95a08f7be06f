#!/bin/bash
# Submit the whole curriculum in one command (run it on the login node, not with sbatch):
#
#   1-frame pretraining -> 4-frame pretraining [-> MSR-VTT fine-tuning] [-> evaluation]
#
# each stage a job that starts only if the previous one COMPLETED (--dependency=afterok) and is cancelled at
# once if it did not (--kill-on-invalid-dep=yes: nothing is left pending forever, whatever the cluster's
# DependencyParameters). Prints one "STAGE JOBID" line per job on stdout; progress notes go to stderr.
#
#   bash slurm/curriculum.sh [--tiny] [--finetune] [--evaluate] [--name NAME]
#   NODES=4 GPUS_PER_NODE=8 RUN_DIR=runs/exp1 bash slurm/curriculum.sh --finetune --evaluate
#   make tiny-assets && GPUS_PER_NODE=0 bash slurm/curriculum.sh --tiny --finetune --evaluate   (first try)
#
# Before the first job is submitted every stage is checked: its resources against the partition (a script
# default that does not fit is lowered, a value you set that does not fit stops here) and its config with
# its overrides and inputs (the stage script in check mode, launch/train.py --check); an error names the
# stage and nothing is submitted.
#
# Environment (all optional):
#   RUN_DIR=runs/curriculum      stage outputs: RUN_DIR/1f, RUN_DIR/4f, RUN_DIR/msrvtt (and their tb/)
#                                (--tiny: runs/tiny_curriculum)
#   CONFIG_1F, CONFIG_4F, CONFIG_FT, CONFIG_EVAL
#                                configs (defaults configs/pretrain_1f.json, configs/pretrain_4f.json,
#                                configs/finetune_msrvtt_4f.json; --tiny: configs/tiny_1f.json, tiny_4f.json,
#                                tiny_finetune.json; evaluation: the evaluated run's config.json)
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

finetune=0 evaluate=0 name=fit tiny=0
while [ $# -gt 0 ]; do
    case "$1" in
        --finetune) finetune=1 ;;
        --evaluate) evaluate=1 ;;
        --tiny) tiny=1 ;;
        --name) name=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) fit_die "unknown argument $1 (see: bash slurm/curriculum.sh --help)" ;;
    esac
    shift
done

if [ "$tiny" = 1 ]; then
    defaults=(configs/tiny_1f.json configs/tiny_4f.json configs/tiny_finetune.json runs/tiny_curriculum)
else
    defaults=(configs/pretrain_1f.json configs/pretrain_4f.json configs/finetune_msrvtt_4f.json runs/curriculum)
fi
run_dir=$(fit_abspath "${RUN_DIR:-${defaults[3]}}")
config_1f=$(fit_config_path "${CONFIG_1F:-${defaults[0]}}" CONFIG_1F)
config_4f=$(fit_config_path "${CONFIG_4F:-${defaults[1]}}" CONFIG_4F)
if [ "$finetune" = 1 ]; then config_ft=$(fit_config_path "${CONFIG_FT:-${defaults[2]}}" CONFIG_FT); fi

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

# The stages: name, environment of its job, sbatch resources, script, arguments. Every stage is checked
# (resources against the partition, config with its overrides) before the first one is submitted.
stages=(pretrain_1f pretrain_4f)
[ "$finetune" = 1 ] && stages+=(finetune_msrvtt)
[ "$evaluate" = 1 ] && stages+=(evaluate)
evaluated=$run_dir/4f
[ "$finetune" = 1 ] && evaluated=$run_dir/msrvtt

stage_env() {  # stage_env STAGE -> its environment as NAME=VALUE lines
    case "$1" in
        pretrain_1f) printf '%s\n' "CONFIG=$config_1f" "OUTPUT_DIR=$run_dir/1f" ;;
        pretrain_4f) printf '%s\n' "CONFIG=$config_4f" "OUTPUT_DIR=$run_dir/4f" "INIT_FROM=$run_dir/1f/weights/final" ;;
        finetune_msrvtt) printf '%s\n' "CONFIG=$config_ft" "OUTPUT_DIR=$run_dir/msrvtt" "INIT_FROM=$run_dir/4f/weights/final" ;;
        # evaluate.sh takes the evaluated run's own config.json (written by the trainer) unless CONFIG_EVAL is set
        evaluate) printf '%s\n' "CHECKPOINT=$evaluated/weights/final" ${CONFIG_EVAL:+"CONFIG=$CONFIG_EVAL"} ;;
    esac
}
stage_script() {
    case "$1" in
        pretrain_1f) echo "$FIT_ROOT/slurm/pretrain_1f.sh" ;;
        pretrain_4f) echo "$FIT_ROOT/slurm/pretrain_4f.sh" ;;
        finetune_msrvtt) echo "$FIT_ROOT/slurm/finetune_msrvtt.sh" ;;
        evaluate) echo "$FIT_ROOT/slurm/evaluate.sh" ;;
    esac
}
stage_args() {  # ARGS_* are split on spaces on purpose
    case "$1" in
        pretrain_1f) echo "${ARGS_1F:-}" ;;
        pretrain_4f) echo "${ARGS_4F:-}" ;;
        finetune_msrvtt) echo "${ARGS_FT:-}" ;;
        evaluate) echo "${ARGS_EVAL:-}" ;;
    esac
}
stage_res() {  # one option per line
    if [ "$1" = evaluate ]; then printf '%s\n' "${eval_res[@]}"; else printf '%s\n' "${train_res[@]}"; fi
}

declare -A fitted
for stage in "${stages[@]}"; do
    mapfile -t res < <(stage_res "$stage")
    read -r -a args <<<"$(stage_args "$stage")"
    mapfile -t envs < <(stage_env "$stage")
    fit_check_resources "$stage" "$(stage_script "$stage")" "${common[@]}" "${res[@]}" ||
        fit_die "stage $stage: its resources do not fit (above); nothing was submitted"
    fitted[$stage]="${FIT_FITTED[*]}"
    (export "${envs[@]}"; fit_check_stage "$stage" "$(stage_script "$stage")" "${args[@]}") ||
        fit_die "stage $stage: config check failed (above); nothing was submitted"
done

mkdir -p logs "$run_dir"
submit() {  # submit STAGE DEPENDENCY; prints "STAGE JOBID"
    local stage=$1 dependency=$2 job
    local dep_args=() res args envs extra
    [ -n "$dependency" ] && dep_args=(--dependency="afterok:$dependency" --kill-on-invalid-dep=yes)
    mapfile -t res < <(stage_res "$stage")
    read -r -a args <<<"$(stage_args "$stage")"
    read -r -a extra <<<"${fitted[$stage]}"
    mapfile -t envs < <(stage_env "$stage")
    job=$(env "${envs[@]}" sbatch --parsable --job-name="$name-$stage" "${dep_args[@]}" "${common[@]}" \
          "${res[@]}" "${extra[@]}" "$(stage_script "$stage")" "${args[@]}") ||
        fit_die "sbatch refused the $stage job"
    job=${job%%;*}     # --parsable prints "jobid[;cluster]"
    echo "$stage $job"
    fit_log "$stage: job $job${dependency:+ (after $dependency succeeds)}, log logs/$name-$stage-$job.out"
    LAST_JOB=$job
}

LAST_JOB=
for stage in "${stages[@]}"; do submit "$stage" "$LAST_JOB"; done
fit_log "outputs under $run_dir; TensorBoard for all stages: tensorboard --logdir $run_dir"
fit_log "watch: squeue -u ${USER:-$(id -un)}; a failed stage cancels the ones after it"
fit_log "after a job ended: the last line of its log says finished / failed with exit code N (docs/SLURM.md)"
