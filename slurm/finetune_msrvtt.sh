#!/bin/bash
# Fine-tune on MSR-VTT from the pretrained (4-frame) weights (docs/SLURM.md).
#
#   INIT_FROM=runs/pretrain_4f/weights/final bash slurm/submit.sh slurm/finetune_msrvtt.sh [launch/train.py args]
#
# Environment: INIT_FROM (a weights folder, .safetensors or the released .pth.tar; default: the config's
# checkpoint.load_checkpoint), CONFIG (default
# configs/finetune_msrvtt_4f.json), OUTPUT_DIR (default: the config's output_dir), PYTHON, LAUNCHER.
# Resources as in pretrain_1f.sh.
#SBATCH --job-name=fit-msrvtt
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
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

fit_train_stage "MSR-VTT fine-tuning" configs/finetune_msrvtt_4f.json \
    "the pretrained weights (e.g. the 4-frame stage's weights/final)" "" "$@"
