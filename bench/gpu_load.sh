#!/usr/bin/env bash
# The load benchmark on a lent GPU host (resnet50 at 224x224, fp32, 64 clients), in one run.
# Usage there: bash bench/gpu_load.sh   (writes $OUT/load-gpu.json)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/server PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 400 python3 bench/load.py --arch resnet50 --size 224 --device cuda --clients 64 \
    --requests 1920 --max-batch 64 --max-delay-ms 10 --render-jobs 64 --render-steps 512 \
    --out "$OUT/load-gpu.json"
