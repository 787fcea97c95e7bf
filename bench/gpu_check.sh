#!/usr/bin/env bash
# The device checks, in one run on a lent GPU host (bare image: torch, grpcio, protobuf,
# numpy, pillow, pytest, scikit-learn, safetensors). Wheels the image lacks travel in .whl/
# (captum, grpcio-health-checking/-reflection 1.66.2, pytest-timeout).
# Usage there: bash bench/gpu_check.sh   (writes $OUT/pytest.log)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/server PYTHONUNBUFFERED=1
python3 -c "import torch, grpc, google.protobuf as p; print('torch', torch.__version__, 'grpc', grpc.__version__, 'protobuf', p.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The whole suite with the server on CUDA (device "auto"), plus the tests marked gpu.
timeout 480 python3 -m pytest -q -p no:cacheprovider -m "not slow" --durations=10 tests 2>&1 | tee "$OUT/pytest.log"
