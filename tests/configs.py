"""Configurations the tests write for server processes, and the folder toy_models is in."""

from __future__ import annotations

from pathlib import Path

from deepvis_server.config import DEFAULT_CONFIG

# On a server process's PYTHONPATH (ServerProcess(pythonpath=[TESTS])), configurations may
# name `toy_models:...` architectures.
TESTS = Path(__file__).resolve().parent


def default_model_config(path: Path, server: str = "") -> Path:
    """Writes a configuration serving the embedded digits model (its files by absolute path)
    after a `[server]` table holding `server`'s lines; returns its path."""
    text = DEFAULT_CONFIG.read_text()
    for name in ("digits_cnn.safetensors", "labels.txt"):
        text = text.replace(f'"{name}"', f'"{DEFAULT_CONFIG.parent / name}"')
    path.write_text(f"[server]\n{server}\n{text}")
    return path
