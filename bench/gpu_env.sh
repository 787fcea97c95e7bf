# Sourced by the GPU scripts: installs the wheels in .whl/ (what the GPU host's python3 lacks;
# no index, no dependency resolution) and puts them and this checkout on PYTHONPATH.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export OUT PYTHONPATH=/tmp/site:$PWD/client:$PWD/server PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
