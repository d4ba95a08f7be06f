#!/bin/bash
# Retrieval evaluation (R@1/5/10, MedR, MeanR) of trained weights on a run config's data.eval datasets.
#
#   CHECKPOINT=runs/finetune_msrvtt/weights/best bash slurm/submit.sh slurm/evaluate.sh [launch/evaluate.py args]
#
# Environment: CHECKPOINT (required: a weights folder, a finished DeepSpeed checkpoint folder, or a weights
# file such as the released model_best.pth.tar), CONFIG (default: the run's config.json beside CHECKPOINT's
# weights/ or checkpoints/ folder), OUT (metrics JSON; default {output_dir}/metrics/evaluate_<name>.json),
# PYTHON. One task is enough for MSR-VTT's 1k test clips; with more tasks the ranks share the work.
#SBATCH --job-name=fit-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# sbatch runs a copy of this file from its spool directory: find the repository from the submitted path.
if [ -z "${FIT_ROOT:-}" ]; then
    submitted=$(scontrol show job -o "${SLURM_JOB_ID:-0}" 2>/dev/null | tr ' ' '\n' | sed -n 's/^Command=//p' | head -n 1)
    FIT_ROOT=$(cd "$(dirname "${submitted:-$0}")/.." && pwd)
fi
source "$FIT_ROOT/slurm/common.sh"

[ -n "${CHECKPOINT:-}" ] || fit_die "CHECKPOINT is not set: point it at a weights folder (RUN/weights/final)"
checkpoint=$(fit_abspath "$CHECKPOINT")
[ -e "$checkpoint" ] || [ "${FIT_CHECK:-0}" = 1 ] || fit_die "CHECKPOINT=$CHECKPOINT does not exist"
run_config="$(dirname "$(dirname "$checkpoint")")/config.json"
if [ -z "${CONFIG:-}" ] && [ -f "$run_config" ]; then CONFIG=$run_config; fi
if [ "${FIT_CHECK:-0}" = 1 ]; then   # at submission (slurm/submit.sh, curriculum.sh): the config and its --set
    if [ -z "${CONFIG:-}" ]; then
        fit_log "config: $run_config, written by the stage that trains $CHECKPOINT (checked with that stage)"
        exit 0
    fi
    sets=()
    while [ $# -gt 0 ]; do
        case "$1" in --set) sets+=(--set "$2"); shift ;; --set=*) sets+=("$1") ;; esac
        shift
    done
    config=$(fit_config_path "$CONFIG" CONFIG) || exit 2
    exec "$PYTHON" "$FIT_ROOT/launch/train.py" --check --config "$config" "${sets[@]}"
fi
[ -n "${CONFIG:-}" ] || fit_die "CONFIG is not set and $run_config does not exist: give the config to evaluate with"
config=$(fit_config_path "$CONFIG" CONFIG)
out_args=()
if [ -n "${OUT:-}" ]; then out_args=(--out "$(fit_abspath "$OUT")"); fi

fit_banner "evaluation"
fit_log "checkpoint $checkpoint, config $config, metrics: ${OUT:-under the output_dir of the config}"
rc=0
fit_run_tasks "$FIT_ROOT/launch/evaluate.py" --checkpoint "$checkpoint" --config "$config" "${out_args[@]}" \
    "$@" || rc=$?
[ "$rc" = 0 ] || { fit_log "evaluation failed with exit code $rc"; exit "$rc"; }
fit_log "evaluation finished"
