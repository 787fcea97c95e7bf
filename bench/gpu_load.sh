#!/usr/bin/env bash
# The load benchmark on a lent GPU host (resnet50 at 224x224, fp32, 64 clients), in one run.
# Usage there: bash bench/gpu_load.sh   (writes $OUT/load-gpu.json)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
timeout 400 python3 bench/load.py --arch resnet50 --size 224 --device cuda --clients 64 \
    --requests 1920 --max-batch 64 --max-delay-ms 10 --render-jobs 64 --render-steps 512 \
    --out "$OUT/load-gpu.json"
