#!/usr/bin/env bash
# The models' GPU check (issue 3), under 8 minutes on one GPU: bf16 vs fp32 agreement, SDPA vs explicit,
# ViT-B/16 video tower samples/s and MFU at T=1 and T=4. Results: $OUT/gpu_check.json (or bench/out/).
#   bash bench/gpu_check.sh             # on a GPU machine
#   bash bench/gpu_check.sh --dry-run   # the same code, tiny config, CPU, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
fi
timeout 450 python3 bench/gpu_check.py --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
