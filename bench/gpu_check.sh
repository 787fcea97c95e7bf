#!/usr/bin/env bash
# The test suite on a GPU host, in one run (a machine whose python3 has torch, grpcio, protobuf,
# numpy, pillow, pytest, scikit-learn, safetensors but no package index). Wheels it lacks go in
# .whl/ beforehand (captum, grpcio-health-checking/-reflection/-status 1.66.2,
# googleapis-common-protos, pytest-timeout; see bench/README.md).
# Usage there: bash bench/gpu_check.sh   (writes $OUT/pytest.log)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
# The whole suite with the server on CUDA (device "auto"), plus the tests marked gpu.
timeout 480 python3 -m pytest -q -p no:cacheprovider -m "not slow" --durations=10 tests 2>&1 | tee "$OUT/pytest.log"
