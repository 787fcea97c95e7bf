#!/usr/bin/env bash
# The load benchmark on a lent GPU host (resnet50 at 224x224, fp32, 64 clients), in one run:
# one Explain call per image for the three methods plus 64 concurrent renders (TF32 steps,
# the server's default), guided backprop again with ExplainBatch calls of 8 images, and the
# renders again in plain fp32 (render_tf32 = false).
# Usage there: bash bench/gpu_load.sh   (writes $OUT/load-gpu*.json)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
timeout 260 python3 bench/load.py --arch resnet50 --size 224 --device cuda --clients 64 \
    --requests 1920 --max-batch 64 --max-delay-ms 10 --render-jobs 64 --render-steps 512 \
    --out "$OUT/load-gpu.json"
timeout 100 python3 bench/load.py --arch resnet50 --size 224 --device cuda --clients 64 \
    --requests 3072 --max-batch 128 --max-delay-ms 10 --render-steps 0 \
    --methods guided_backprop --per-call 8 --out "$OUT/load-gpu-batch8.json"
timeout 75 python3 bench/load.py --arch resnet50 --size 224 --device cuda --clients 64 \
    --methods "" --render-jobs 64 --render-steps 512 --render-fp32 \
    --out "$OUT/load-gpu-render-fp32.json"
