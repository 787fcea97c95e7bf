"""The response cache ([server] cache_bytes): identical Explain requests answered without
compute, within a byte bound, never across bearer tokens, empty after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

import deepvis
from deepvis_server.config import ConfigError, ServerConfig, load_config, parse_config
from deepvis_server.response_cache import ENTRY_OVERHEAD, ResponseCache
from deepvis_server.server import DeepvisServer, serve_in_thread


def cached_config(cache_bytes: int, **access: Any) -> ServerConfig:
    config = load_config()
    return replace(
        config,
        limits=replace(config.limits, cache_bytes=cache_bytes),
        access=replace(config.access, **access),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[DeepvisServer]:
    with serve_in_thread(cached_config(64 * 1024 * 1024)) as s:
        yield s


def computed(server: DeepvisServer) -> int:
    return server.engine.batchers["digits"].computed_items


def test_an_identical_request_is_answered_from_the_cache(server, sample_paths) -> None:
    with deepvis.Client(server.bound_address, timeout=60) as client:
        first = client.explain(sample_paths[3], method="grad_cam", target=2)
        before = computed(server)
        again = client.explain(sample_paths[3], method="grad_cam", target=2)
        assert computed(server) == before  # no compute
        assert not first.cached and again.cached
        assert again.queue_ms == again.compute_ms == again.batch_size == 0
        assert first.array is not None and again.array is not None
        np.testing.assert_array_equal(first.array, again.array)
        assert first.image is not None and again.image is not None
        assert first.image.tobytes() == again.image.tobytes()
        assert [p.index for p in first.predictions] == [p.index for p in again.predictions]
        # Anything different is a miss: another target, method, input or output option.
        others: list[dict[str, Any]] = [
            dict(method="grad_cam", target=3),
            dict(method="saliency", target=2),
            dict(method="grad_cam", target=2, render=False),
        ]
        for other in others:
            assert not client.explain(sample_paths[3], **other).cached, other
        assert not client.explain(sample_paths[4], method="grad_cam", target=2).cached
        # ExplainBatch items are looked up one by one.
        batch = client.explain_batch(
            [sample_paths[3], sample_paths[5]], method="grad_cam", targets=[2, 2]
        )
        assert [e.cached for e in batch] == [True, False]
    text = generate_latest(server.observability.registry).decode()
    cache = server.engine.cache
    assert cache is not None
    assert f"deepvis_response_cache_hits_total {float(cache.hits)}" in text
    assert f"deepvis_response_cache_misses_total {float(cache.misses)}" in text
    assert cache.hits == 2 and cache.misses >= 6
    assert f"deepvis_response_cache_bytes {float(cache.bytes)}" in text


def test_the_cache_is_off_by_default(sample_paths) -> None:
    config = load_config()
    assert config.limits.cache_bytes == 0
    with serve_in_thread(config) as s:
        assert s.engine.cache is None
        with deepvis.Client(s.bound_address, timeout=60) as client:
            client.explain(sample_paths[0])
            assert not client.explain(sample_paths[0]).cached
        assert "deepvis_response_cache" not in generate_latest(s.observability.registry).decode()


def test_the_cache_keeps_to_its_byte_bound() -> None:
    cache = ResponseCache(3 * (100 + ENTRY_OVERHEAD))
    keys = [cache.key(b"", bytes([i])) for i in range(5)]
    for k in keys[:3]:
        cache.put(k, b"x" * 100)
    assert len(cache) == 3 and cache.bytes == 3 * (100 + ENTRY_OVERHEAD)
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], b"y" * 100)  # the least recently used (keys[1]) goes
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    cache.put(keys[4], b"z" * 250)  # takes two entries' room
    assert cache.bytes <= cache.max_bytes and len(cache) == 2
    cache.put(keys[1], b"w" * 10_000)  # larger than the whole bound: not kept
    assert cache.get(keys[1]) is None and cache.bytes <= cache.max_bytes


def test_a_small_cache_evicts_the_oldest_answer(sample_paths) -> None:
    with serve_in_thread(cached_config(1)) as s:  # room for nothing
        with deepvis.Client(s.bound_address, timeout=60) as client:
            client.explain(sample_paths[0], render=False)
            assert not client.explain(sample_paths[0], render=False).cached
    # A saliency answer of the digits model is its 4 KiB array and a few hundred bytes more:
    # three fit in 15 KiB, four do not.
    bound = 3 * (4096 + 1024)
    with serve_in_thread(cached_config(bound)) as s:
        with deepvis.Client(s.bound_address, timeout=60) as client:
            a = client.explain(sample_paths[0], method="saliency", render=False)
            assert a.array is not None and a.array.nbytes == 4096
            client.explain(sample_paths[1], method="saliency", render=False)
            assert client.explain(sample_paths[1], method="saliency", render=False).cached
            for i in (2, 3):
                client.explain(sample_paths[i], method="saliency", render=False)
            assert not client.explain(sample_paths[0], method="saliency", render=False).cached
        cache = s.engine.cache
        assert cache is not None and cache.bytes <= bound and len(cache) == 3


def test_answers_are_never_shared_across_tokens(tmp_path: Path, sample_paths) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("alpha-0123456789abcdef\nbeta-0123456789abcdef\n")
    with serve_in_thread(cached_config(1 << 24, auth_tokens_file=tokens)) as s:
        address = s.bound_address
        with deepvis.Client(address, timeout=60, token="alpha-0123456789abcdef") as alpha:
            assert not alpha.explain(sample_paths[2]).cached
            assert alpha.explain(sample_paths[2]).cached
        with deepvis.Client(address, timeout=60, token="beta-0123456789abcdef") as beta:
            assert not beta.explain(sample_paths[2]).cached
            assert beta.explain(sample_paths[2]).cached


def test_a_restart_starts_with_an_empty_cache(sample_paths) -> None:
    config = cached_config(1 << 24)
    for _ in range(2):
        with serve_in_thread(config) as s:
            with deepvis.Client(s.bound_address, timeout=60) as client:
                assert not client.explain(sample_paths[6], method="saliency").cached
                assert client.explain(sample_paths[6], method="saliency").cached


def test_cache_bytes_is_checked() -> None:
    assert parse_config({"server": {"cache_bytes": 1024}}, Path(".")).limits.cache_bytes == 1024
    for bad in (-1, 1.5, True, "1G", 2**41):
        with pytest.raises(ConfigError, match="cache_bytes must be a whole number of bytes"):
            parse_config({"server": {"cache_bytes": bad}}, Path("."))
