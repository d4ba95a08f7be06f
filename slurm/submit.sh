#!/bin/bash
# Submit one job script after checking it (run it on the login node, not with sbatch):
#
#   bash slurm/submit.sh [sbatch options] SCRIPT [script arguments]
#   bash slurm/submit.sh --array=0-31 slurm/make_shards.sh webvid --csv results_2M_train.csv ... --out DIR
#   CONFIG=configs/tiny_1f.json bash slurm/submit.sh --gpus-per-node=0 --ntasks-per-node=1 slurm/pretrain_1f.sh
#
# Before sbatch, and so before any queue wait:
#   resources  the script's #SBATCH defaults + the options given are compared with what the partition offers
#              (scontrol / sinfo): a default that does not fit (16 CPUs per task on 8-CPU nodes) is lowered to
#              what fits and said so; an option you gave that does not fit stops here with the option to lower
#              (SLURM would accept it and leave the job PENDING forever, Reason=PartitionConfig);
#   config     a training or evaluation script is run in check mode: its config with the --set arguments and
#              environment (CONFIG, OUTPUT_DIR, INIT_FROM) is validated, and its shards and text model are
#              looked up, for the job's number of ranks (launch/train.py --check).
# sbatch options must be written --option=value (so the script is the first argument that is not an option).
# Prints the job id on stdout (sbatch --parsable). Creates logs/ in the current directory (the jobs' log folder).
set -euo pipefail

FIT_ROOT=${FIT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
source "$FIT_ROOT/slurm/common.sh"

options=()
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
    case "$1" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;; esac
    options+=("$1")
    shift
done
[ $# -gt 0 ] || fit_die "usage: bash slurm/submit.sh [sbatch --option=value ...] SCRIPT [arguments]"
script=$1
shift
[ -f "$script" ] || fit_die "$script: no such job script (sbatch options go before it, as --option=value)"
what=$(basename "$script" .sh)

fit_check_resources "$what" "$script" "${options[@]}" || fit_die "$what: not submitted (resources above)"
fit_check_stage "$what" "$script" "$@" || fit_die "$what: not submitted (the check above failed)"
mkdir -p logs
job=$(sbatch --parsable "${options[@]}" "${FIT_FITTED[@]}" "$script" "$@") || fit_die "sbatch refused $script"
job=${job%%;*}
echo "$job"
fit_log "$what: job $job${FIT_FITTED[*]:+ (${FIT_FITTED[*]})}; log under logs/; state: squeue -j $job"
