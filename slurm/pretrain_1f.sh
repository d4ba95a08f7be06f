#!/bin/bash
# Curriculum stage 1: pretrain on images + videos at 1 frame per video (docs/SLURM.md).
#
#   bash slurm/submit.sh slurm/pretrain_1f.sh [launch/train.py args, e.g. --set optim.lr=1e-4]
#   CONFIG=configs/my_1f.json OUTPUT_DIR=runs/my_1f bash slurm/submit.sh --nodes=4 slurm/pretrain_1f.sh
#   (submit.sh checks resources and config first, then runs sbatch; a bare sbatch works too, unchecked)
#
# Environment: CONFIG (default configs/pretrain_1f.json), OUTPUT_DIR (default: the config's output_dir),
# PYTHON, LAUNCHER (srun | deepspeed). Resources: override any #SBATCH line on the sbatch command line, e.g.
# `--nodes=4 --gpus-per-node=4 --ntasks-per-node=4` (keep one task per GPU), or on a CPU-only cluster
# `--gpus-per-node=0 --ntasks-per-node=1`. Relative paths are taken from the directory you submit from.
#SBATCH --job-name=fit-1f
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
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

fit_train_stage "1-frame pretraining" configs/pretrain_1f.json "" "" "$@"
