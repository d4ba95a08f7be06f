#!/bin/bash
# Curriculum stage 2: pretrain at 4 frames per video, starting from the 1-frame stage's final weights; the
# temporal embedding is inflated when the 1-frame model had fewer frames (checkpoint.load_temporal_fix).
#
#   INIT_FROM=runs/pretrain_1f/weights/final bash slurm/submit.sh slurm/pretrain_4f.sh [launch/train.py args]
#   (slurm/curriculum.sh submits it after the 1-frame stage with --dependency=afterok)
#
# Environment: INIT_FROM (a weights folder or .safetensors; default: the config's checkpoint.load_checkpoint),
# CONFIG (default configs/pretrain_4f.json), OUTPUT_DIR (default: the config's output_dir), PYTHON, LAUNCHER.
# After a requeue the stage resumes from its own checkpoint; INIT_FROM only seeds a fresh start.
# Resources as in pretrain_1f.sh.
#SBATCH --job-name=fit-4f
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# sbatch runs a copy of this file from its spool directory: find the repository from the submitted path.
if [ -z "${FIT_ROOT:-}" ]; then
    submitted=$(scontrol show job -o "${SLURM_JOB_ID:-0}" 2>/dev/null | tr ' ' '\n' | sed -n 's/^Command=//p' | head -n 1)
    FIT_ROOT=$(cd "$(dirname "${submitted:-$0}")/.." && pwd)
fi
source "$FIT_ROOT/slurm/common.sh"

fit_train_stage "4-frame pretraining" configs/pretrain_4f.json "the 1-frame stage's weights/final folder" \
    " (its temporal rows: the 'train: temporal embedding' line below)" "$@"
