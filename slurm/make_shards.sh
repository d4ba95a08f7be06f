#!/bin/bash
# Write one dataset's shards as a job array: task i of N packs its disjoint slice of the input rows
# (make-shards --task-index i --num-tasks N); the task that finishes the last chunk writes manifest.json,
# so the parts form one dataset. Any make-shards source works (docs/SHARDS.md, docs/SLURM.md):
#
#   bash slurm/submit.sh --array=0-31 slurm/make_shards.sh webvid --csv results_2M_train.csv --videos-root videos/ \
#          --out shards/webvid
#   bash slurm/submit.sh slurm/make_shards.sh cc3m --tsv Train_GCC-training.tsv --images-root cc3m/ --out shards/cc3m
#
# (slurm/submit.sh lowers the default 16 CPUs per task to what the partition's nodes have; with a bare sbatch
# on smaller nodes pass --cpus-per-task yourself, or the tasks pend forever with Reason=PartitionConfig.)
#
# Every task uses --workers = its --cpus-per-task (pass --workers to change that). A task that is requeued or
# re-run skips the chunks it already finished. If tasks were cancelled, re-run the same command (only the
# missing chunks are written) or, once all are done, `make-shards manifest DIR`. Environment: PYTHON.
#SBATCH --job-name=fit-shards
#SBATCH --array=0-15
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

# sbatch runs a copy of this file from its spool directory: find the repository from the submitted path.
if [ -z "${FIT_ROOT:-}" ]; then
    submitted=$(scontrol show job -o "${SLURM_JOB_ID:-0}" 2>/dev/null | tr ' ' '\n' | sed -n 's/^Command=//p' | head -n 1)
    FIT_ROOT=$(cd "$(dirname "${submitted:-$0}")/.." && pwd)
fi
source "$FIT_ROOT/slurm/common.sh"

[ $# -gt 0 ] || fit_die "usage: bash slurm/submit.sh [--array=0-N] slurm/make_shards.sh SOURCE --out DIR [make-shards options]"
if [ "${FIT_CHECK:-0}" = 1 ]; then exit 0; fi    # at submission: nothing more to check before the job runs
slice=$(fit_array_slice)
read -r task_index num_tasks <<<"$slice"
fit_banner "make-shards task $task_index of $num_tasks"
"$PYTHON" -m shard_tools.cli "$1" --workers "${SLURM_CPUS_PER_TASK:-1}" "${@:2}" \
    --task-index "$task_index" --num-tasks "$num_tasks"
