#!/bin/sh
# The batching targets on the CPU, as consecutive runs (default 5) on the same load: resnet18 at
# 112x112, 16 closed-loop clients as 4 processes x 4 threads sending float32 tensors and asking
# for a call's default outputs (a picture and a float32 array), at the server's default
# settings. Each run has two rounds; each round serves the load from the default server and
# then from a second one with max_delay_ms = 30 (the latency comparison, within the run), times
# TorchServe's explanations endpoint on it and measures Captum's and the engine's in-process
# baselines right after; a run's ratios are the median of its rounds'. Then Grad-CAM and
# activations with uint8 pixels in and float16 arrays out (no pictures), the same way.
# Writes bench/results/batching-<run>-{defaults,arrays}.json.
set -eu
runs=${1:-5}
py=${PY:-.venv/bin/python}
load="--clients 16 --processes 4 --defaults --requests 640 --rounds 2 --render-steps 0"
i=1
while [ "$i" -le "$runs" ]; do
    $py bench/load.py $load --inputs float32 --outputs default --torchserve --paired-delay-ms 30 \
        --out "bench/results/batching-$i-defaults.json"
    $py bench/load.py $load --methods grad_cam,activations \
        --out "bench/results/batching-$i-arrays.json"
    i=$((i + 1))
done
