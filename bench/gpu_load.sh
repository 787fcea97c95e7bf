#!/usr/bin/env bash
# The load benchmark on a GPU host (resnet50 at 224x224, fp32, 64 clients), in one run
# of at most 8 minutes (the timeouts sum to 470 s):
#   1. one Explain call per image for the three methods, plus 64 concurrent renders (TF32
#      steps, the server's default) against one alone;
#   2. guided backprop from 2 server workers (deepvis-server --workers 2);
#   3. guided backprop from 4 server workers: one event loop answers ~1,000 calls/s at
#      best (bench/overhead.py), so 2,000 images/s of single-image calls needs several;
#   4. guided backprop with ExplainBatch calls of 8 images;
#   5. the renders again in plain fp32 (render_tf32 = false).
# Each load run reports device_busy and server_loop_thread_busy: which one limits.
# Usage there: bash bench/gpu_load.sh   (writes $OUT/*.json)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
common=(--arch resnet50 --size 224 --device cuda --clients 64 --max-delay-ms 10)
timeout 190 python3 bench/load.py "${common[@]}" --requests 1920 --max-batch 64 \
    --render-jobs 64 --render-steps 512 --out "$OUT/load-gpu.json"
timeout 75 python3 bench/load.py "${common[@]}" --requests 3840 --max-batch 64 \
    --render-steps 0 --methods guided_backprop --workers 2 --out "$OUT/load-gpu-workers2.json"
timeout 70 python3 bench/load.py "${common[@]}" --requests 3840 --max-batch 64 \
    --render-steps 0 --methods guided_backprop --workers 4 --out "$OUT/load-gpu-workers4.json"
timeout 75 python3 bench/load.py "${common[@]}" --requests 3072 --max-batch 128 \
    --render-steps 0 --methods guided_backprop --per-call 8 --out "$OUT/load-gpu-batch8.json"
timeout 60 python3 bench/load.py "${common[@]}" --methods "" --render-jobs 64 \
    --render-steps 512 --render-fp32 --out "$OUT/load-gpu-render-fp32.json"
