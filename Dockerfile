# syntax=docker/dockerfile:1
# deepvis-server. CPU torch by default; on a GPU host build with the CUDA wheels:
#   docker build -t deepvis-server:cpu .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t deepvis-server:cu124 .
# The CUDA wheels bundle the CUDA runtime: the host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit (docker run --gpus all, or the GPU reservation in docker-compose.yml).
#
# Mounted read-only at run time (nothing is baked in but the embedded digits model):
#   /etc/deepvis/deepvis.toml   the configuration (example: deploy/config/deepvis.toml)
#   /models                     weights and labels of your own models
# The embedded digits model is linked at /opt/deepvis/default_model so a configuration
# can name it by a fixed path (the example configuration does).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, only from the chosen index, in its own layer: a source change does not
# reinstall it, and `pip install '.[server]'` keeps it (the requirements are ranges).
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.4" "torchvision>=0.19"

WORKDIR /tmp/deepvis-src
COPY pyproject.toml README.md ./
COPY client client
COPY server server
RUN pip install ".[server]" \
 && mkdir -p /opt/deepvis /models /etc/deepvis \
 && python -c "import os, deepvis_server.config as c; os.symlink(c.DEFAULT_MODEL_DIR, '/opt/deepvis/default_model')" \
 && test -f /opt/deepvis/default_model/digits_cnn.safetensors \
 && groupadd --system --gid 10001 deepvis \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/deepvis --create-home \
      --shell /usr/sbin/nologin deepvis \
 && cd / && rm -rf /tmp/deepvis-src

WORKDIR /home/deepvis
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 50051: gRPC (Explainer, health, reflection); 9100: Prometheus /metrics (when the
# configuration sets [server] metrics_port = 9100).
EXPOSE 50051 9100

# The standard gRPC health service: exit 0 only when SERVING (models loaded and warmed up).
# With TLS on, override it with the CLI's --tls-ca flags (or use `--tls`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["deepvis", "health", "--server", "127.0.0.1:50051", "--timeout", "3"]

ENTRYPOINT ["deepvis-server"]
# --allow-insecure-remote: plaintext gRPC on 0.0.0.0 is meant for a private network only
# (the compose network, a cluster's pod network behind a NetworkPolicy). Anywhere else set
# tls_cert/tls_key (and auth_tokens_file) in the configuration: with TLS on the flag has
# no effect.
CMD ["--config", "/etc/deepvis/deepvis.toml", "--address", "0.0.0.0:50051", "--allow-insecure-remote"]
