#!/usr/bin/env bash
# The one prepared GPU check: bf16 training-step throughput (MFU) and seconds to
# generate 8 s of audio at the small and large sizes, checked against fp32.
# Runs on a bare CUDA machine with torch + einops installed (no foley install needed).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-.}}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
