#!/bin/sh
# The batching targets on the CPU, as consecutive runs (default 5) on the same load: resnet18 at
# 112x112, 16 closed-loop clients as 4 processes x 4 threads sending float32 tensors and asking
# for a call's default outputs (a picture and a float32 array), at the server's default
# settings, each run with Captum's and the engine's in-process baselines and TorchServe's
# explanations endpoint in the same run; then the same load with max_delay_ms = 30 for the
# latency comparison, and Grad-CAM and activations with uint8 pixels in and float16 arrays out
# (no pictures). Writes bench/results/batching-<run>-{defaults,delay30,arrays}.json.
set -eu
runs=${1:-5}
py=${PY:-.venv/bin/python}
load="--clients 16 --processes 4 --inputs float32 --outputs default --defaults --requests 480 --render-steps 0"
i=1
while [ "$i" -le "$runs" ]; do
    $py bench/load.py $load --torchserve --out "bench/results/batching-$i-defaults.json"
    $py bench/load.py $load --max-delay-ms 30 --methods guided_backprop \
        --out "bench/results/batching-$i-delay30.json"
    $py bench/load.py --clients 16 --processes 4 --defaults --requests 480 --render-steps 0 \
        --methods grad_cam,activations --out "bench/results/batching-$i-arrays.json"
    i=$((i + 1))
done
